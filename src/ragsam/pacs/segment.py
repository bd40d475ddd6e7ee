"""``pacs segment``: fetch a CT series (WADO-RS), segment it, store a DICOM SEG into its study (STOW-RS).

Stages (each one's seconds in :attr:`PacsSegmentResult.seconds`):

1. **find** the series (QIDO-RS) and check it (:mod:`ragsam.pacs.series`); cheap model
   checks (options, run folder) come first, so a bad call fetches nothing;
2. **fetch** what the cache lacks (:class:`~ragsam.pacs.cache.InstanceCache`);
3. **segment** the cached series folder with the existing Python API:
   :func:`ragsam.inference.rag_segment.segment_cases` (``--index``: RAG, or the hybrid with
   ``--run``) or :func:`ragsam.inference.predict` (``--run`` alone). The label volume goes
   to the cache's ``results/<series>/``, with those functions' resume rule: a rerun with the
   same series and model segments nothing;
   With ``--output-format both``: the DICOM SEG is written beside the labels by the same
   code as ``ragsam segment --output-format both`` (content-derived UIDs: the same labels
   give the same SOP Instance UID);
4. **read** the SEG back from the cache;
5. **store** it, unless QIDO-RS finds that SOP Instance UID in the study already.

Nothing is stored before the last stage, and the SEG is one instance, which a DICOMweb
server stores whole or not at all: a refusal or a cut connection at any stage leaves no
partial SEG in the PACS, and the rerun reuses every finished stage.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragsam.errors import InputError
from ragsam.pacs.cache import InstanceCache
from ragsam.pacs.client import Pacs
from ragsam.pacs.series import FetchedSeries, fetch_series, find_series
from ragsam.utils.atomic import atomic_path, check_writable

#: ``progress(stage, done, total)``: stage ``fetch`` (instances), ``segment`` (slices), ``store`` (bytes).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PacsModel:
    """What segments the series: a support bank (RAG), a fine-tuned run, or both (hybrid).

    Attributes mirror ``ragsam segment`` / ``ragsam predict`` options.
    """

    index: str | os.PathLike | None = None
    run: str | os.PathLike | None = None
    sam2: str = "facebook/sam2.1-hiera-tiny"
    sam2_run: str | os.PathLike | None = None
    k: int = 4
    hybrid_weight: float = 0.5
    batch_size: int = 8
    device: str = "auto"

    @property
    def method(self) -> str:
        """``RAG``, ``hybrid`` or ``fine-tuned SAM`` (the SEG's algorithm name)."""
        if self.index is None:
            return "fine-tuned SAM"
        return "RAG" if self.run is None else "hybrid"

    def check(self) -> None:
        """Refuse a call that names no model, or bad options, before anything is fetched."""
        from ragsam.inference.rag_segment import FINE_TUNED_RUNS
        from ragsam.retrieval.segment import SegmentOptions

        if self.index is None and self.run is None:
            raise InputError(None, "give --index BANK (retrieval), --run RUN (fine-tuned) or both (hybrid)")
        if self.sam2_run is not None and self.index is None:
            raise InputError(None, "--sam2-run needs --index (it is the retrieval model)")
        if self.index is not None:
            SegmentOptions(k=self.k, batch_size=self.batch_size, run_dir=self.run,
                           hybrid_weight=self.hybrid_weight).check(FINE_TUNED_RUNS)
            from ragsam.retrieval.bank import SupportBank

            SupportBank.load(self.index)
        else:
            from ragsam.inference.run_loader import read_run_config

            read_run_config(self.run)  # type: ignore[arg-type]
            if self.batch_size < 1:
                raise InputError(None, f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class PacsSegmentResult:
    """What :func:`pacs_segment` did (JSON-serialisable via :meth:`to_json`).

    Attributes:
        seg_sop_uid, seg_series_uid: the SEG in the study.
        stored: False when the study already held that very SEG (same series, model and labels).
        organs: label ids present; labels: the label volume in the cache (NIfTI).
        seconds: per stage (find, fetch, segment: the SEG included, read, store) and total.
    """

    url: str
    study_uid: str
    series_uid: str
    seg_sop_uid: str
    seg_series_uid: str
    method: str
    stored: bool
    fetched: int
    cached: int
    organs: list[int]
    labels: str
    output: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pacs_segment(pacs: Pacs, study_uid: str, model: PacsModel, series_uid: str | None = None,
                 cache: InstanceCache | None = None, output: str | os.PathLike | None = None,
                 force: bool = False, progress: Progress | None = None) -> PacsSegmentResult:
    """Segment a CT series of a PACS study and store the result as a DICOM SEG into that study.

    Args:
        pacs: the server. study_uid: StudyInstanceUID. series_uid: the CT series (default:
            the study's only CT series).
        model: what segments it (:class:`PacsModel`).
        cache: where fetched instances and results are kept (default: :func:`default_cache_dir`).
        output: also write the label volume there (NIfTI, on the series' grid).
        force: replace an existing ``output``.
        progress: see :data:`Progress`.
    Raises:
        InputError: see :mod:`ragsam.pacs.series` and :mod:`ragsam.pacs.client`; nothing is stored.
        OutputExistsError: ``output`` exists and ``force`` is false (checked first).
    """
    timer = _Timer()
    cache = cache or InstanceCache()
    if output is not None:
        check_writable(output, force)
    model.check()
    with timer("find"):
        item = find_series(pacs, study_uid, series_uid)
        series_uid = str(item["0020000E"]["Value"][0])
    with timer("fetch"):
        fetched = fetch_series(pacs, cache, study_uid, series_uid,
                               None if progress is None else (lambda d, t: progress("fetch", d, t)))
    with timer("segment"):  # with the SEG: segment / predict write it beside the labels (one code path)
        labels_path, seg_path = _segment(fetched, model, cache, progress)
    with timer("read"):
        seg, organs = _read(labels_path, seg_path)
    with timer("store"):
        present = pacs.has_instance(study_uid, str(seg.SOPInstanceUID))
        if not present:
            pacs.store(seg, study_uid, None if progress is None else (lambda d, t: progress("store", d, t)))
    if output is not None:
        with atomic_path(output, force=force) as tmp:
            shutil.copyfile(labels_path, tmp)
    return PacsSegmentResult(pacs.url, study_uid, series_uid, str(seg.SOPInstanceUID), str(seg.SeriesInstanceUID),
                             model.method, not present, fetched.fetched, fetched.cached, organs,
                             str(labels_path), None if output is None else str(output), timer.finish())


def _segment(fetched: FetchedSeries, model: PacsModel, cache: InstanceCache, progress: Progress | None
             ) -> tuple[Path, Path]:
    """The series' label volume and its DICOM SEG in the cache (``results/<series>/<method>.nii.gz`` and
    ``.seg.dcm``: ``--output-format both`` of ``segment`` / ``predict``), segmented or reused."""
    slug = {"RAG": "rag", "hybrid": "hybrid", "fine-tuned SAM": "finetuned"}[model.method]
    out = cache.results_dir(fetched.series_uid) / f"{slug}.nii.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    if model.index is not None:
        from ragsam.inference.rag_segment import SegmenterOptions, segment_cases
        from ragsam.retrieval.segment import SegmentOptions

        options = SegmentOptions(k=model.k, batch_size=model.batch_size, run_dir=model.run,
                                 hybrid_weight=model.hybrid_weight, output_format="both")
        models = SegmenterOptions(model.sam2, model.sam2_run, device=model.device)
        segment_cases(fetched.folder, out, model.index, models, options,
                      progress=None if progress is None else (lambda _c, d, t: progress("segment", d, t)))
    else:
        from ragsam.inference import PredictOptions, predict

        predict(model.run, fetched.folder, out,  # type: ignore[arg-type]
                PredictOptions(batch_size=model.batch_size, device=model.device, output_format="both"))
    from ragsam.data.dicom_seg import seg_path_for

    return out, seg_path_for(out)


def _read(labels_path: Path, seg_path: Path) -> tuple[Any, list[int]]:
    """The SEG dataset written beside the labels, and the organs present in the labels."""
    import numpy as np
    import pydicom

    from ragsam.data.volume import read_labels

    labels = read_labels(labels_path)
    return pydicom.dcmread(seg_path), sorted(int(o) for o in np.unique(labels.array) if o)


class _Timer:
    """Seconds per stage (``with timer("fetch"): ...``) and the total."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str) -> Any:
        import contextlib

        @contextlib.contextmanager
        def timed() -> Any:
            begin = time.perf_counter()
            try:
                yield
            finally:
                self.seconds[stage] = round(time.perf_counter() - begin, 3)

        return timed()

    def finish(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.start, 3)}
