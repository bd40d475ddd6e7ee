"""Retrieval-augmented segmentation of volumes and dataset folders (``ragsam segment``), models built here.

This floor loads what :class:`ragsam.retrieval.segment.RagSegmenter` is handed: SAM 2
from weights or a ``ragsam train-rag`` run (:func:`ragsam.training.rag_model.load_sam2_run`),
and, for the hybrid, a ``ragsam train`` run's class probabilities (:class:`FineTunedRuns`,
:mod:`ragsam.retrieval.hybrid` fuses them). :func:`segment_volume` segments one volume;
:func:`segment_cases` a dataset folder with one segmenter, resuming through
:mod:`ragsam.utils.case_runner`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragsam.data.case_outputs import case_outputs, check_seg_inputs, writes_seg
from ragsam.errors import InputError
from ragsam.retrieval.segment import (
    DEFAULT_SAM2,
    RagSegmenter,
    SegmentOptions,
    SegmentSummary,
    bank_label_names,
    check_request,
    check_settings,
)
from ragsam.utils import ranks
from ragsam.utils.atomic import check_writable
from ragsam.utils.case_runner import file_digest, model_key, plan_cases, run_cases, weights_key

if TYPE_CHECKING:
    from torch import Tensor

    from ragsam.data.slices import SliceGrid
    from ragsam.data.volume import Volume


def run_probabilities(run_dir: str, image: Volume, device: str, batch_size: int) -> tuple[Tensor, SliceGrid]:
    """Fine-tuned class probabilities of every slice of ``image`` with the run's own slicing.

    Returns:
        ``(probabilities float32 (Z, C, S, S) on the CPU, slice grid)``.
    """
    from ragsam.data.slices import SliceSettings, volume_to_slices
    from ragsam.inference.predict import predict_probabilities
    from ragsam.inference.run_loader import load_run

    model, cfg = load_run(run_dir, device, merge=True)
    if cfg.data.window is None:
        raise InputError(run_dir, "the run's data.window is not set (was it started by ragsam train?)")
    settings = SliceSettings(window=tuple(cfg.data.window), size=cfg.model.image_size, context=cfg.data.context)
    stack = volume_to_slices(image, None, settings)
    dev = next(model.parameters()).device
    probs = predict_probabilities(model, stack.model_input(channels=3), batch_size, dev, cfg.optim.bf16)
    return probs.float().cpu(), stack.grid


class FineTunedRuns:
    """``ragsam train`` run folders as the hybrid's fine-tuned half
    (:class:`ragsam.retrieval.segment.FineTunedSource`)."""

    def check(self, run_dir: str | os.PathLike) -> None:
        from ragsam.inference.run_loader import read_run_config

        read_run_config(run_dir)

    def probabilities(self, run_dir: str, image: Volume, device: str, batch_size: int) -> tuple[Tensor, SliceGrid]:
        return run_probabilities(run_dir, image, device, batch_size)


FINE_TUNED_RUNS = FineTunedRuns()


@dataclass(frozen=True)
class SegmenterOptions:
    """How :func:`load_segmenter` builds a :class:`RagSegmenter`: the construction-time settings (the
    per-volume ones are :class:`SegmentOptions`).

    Attributes:
        sam2_weights: see :func:`ragsam.models.sam2.build_sam2`.
        sam2_run: a ``ragsam train-rag`` run folder: its fine-tuned SAM 2 (LoRA merged) replaces
            ``sam2_weights``, and the ``pointer_positions`` / ``use_empty_supports`` it was trained with apply.
        embedder: ``None`` (rebuild the bank's embedder), weights, or a ``SliceEmbedder``;
            it must be the embedder the bank was built with.
        cache_size: encoded support slices kept in memory.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        pointer_positions, use_empty_supports: see :class:`~ragsam.retrieval.sam2_memory.Sam2MemorySegmenter`.
    """

    sam2_weights: str = DEFAULT_SAM2
    sam2_run: str | os.PathLike | None = None
    embedder: Any = None
    cache_size: int = 256
    device: str = "auto"
    pointer_positions: str = "sequential"
    use_empty_supports: bool = True

    def check(self) -> None:
        """Refuse bad settings before any model loads."""
        check_settings(self.pointer_positions, self.cache_size)

    def output_key(self) -> dict[str, Any]:
        """The settings that change an output (the cache, device and embedder do not: the bank fixes the
        embedder; the runs enter by their files)."""
        return {"sam2": weights_key(self.sam2_weights), "pointers": self.pointer_positions,
                "empty": self.use_empty_supports,
                "sam2_run": None if self.sam2_run is None else _run_digests(self.sam2_run)}


def _run_digests(run_dir: str | os.PathLike) -> list[str]:
    """SHA-256 of a run's weights and config (what identifies it in a resume key)."""
    return [file_digest(Path(run_dir) / n) for n in ("model.safetensors", "config.yaml")]


def load_segmenter(bank_dir: str | os.PathLike, segmenter: SegmenterOptions | None = None) -> RagSegmenter:
    """A :class:`RagSegmenter` on ``bank_dir`` with its SAM 2 built (``segmenter``: default its defaults)
    and ``ragsam train`` runs usable for the hybrid.

    Raises:
        InputError: bad bank, other embedder, bad weights or run, bad settings.
    """
    opts = segmenter or SegmenterOptions()
    sam2: str | tuple[Any, dict[str, Any]] = opts.sam2_weights
    if opts.sam2_run is not None:
        from ragsam.training.rag_model import load_sam2_run
        from ragsam.utils.device import resolve_device

        opts.check()
        sam2 = load_sam2_run(opts.sam2_run, device=str(resolve_device(opts.device)))
    return RagSegmenter(bank_dir, sam2, opts.embedder, opts.cache_size, opts.device, opts.pointer_positions,
                        opts.use_empty_supports, fine_tuned=FINE_TUNED_RUNS)


def segment_volume(input_path: str | os.PathLike, output_path: str | os.PathLike, bank_dir: str | os.PathLike,
                   segmenter: SegmenterOptions | None = None, options: SegmentOptions | None = None,
                   force: bool = False, progress: Callable[[int, int], None] | None = None) -> SegmentSummary:
    """Segment one CT volume with retrieval-augmented SAM 2 and write its label map.

    For several volumes use :func:`segment_cases` (or one :class:`RagSegmenter`):
    the models load once and encoded supports are shared between volumes.

    Args:
        input_path: CT image file or DICOM series folder (HU).
        output_path: label file to write (``.nii.gz`` recommended), on the input's grid.
        bank_dir: a support bank (``ragsam index build``); its prepared cache supplies the supports.
        segmenter: the models (:class:`SegmenterOptions`; default: its defaults).
        options: how the volume is segmented (:class:`SegmentOptions`: k, excluded cases, z prior, the
            hybrid's ``run_dir``, ...; default: its defaults).
        force: replace an existing output.
        progress: called as ``progress(done_slices, total_slices)``.
    Raises:
        InputError: bad input image, k out of range, other embedder, bad weights.
        OutputExistsError: the output exists and ``force`` is false (checked before any work).
    """
    options = options or SegmentOptions()
    check_request(options.hybrid_weight, options.batch_size, options.run_dir, FINE_TUNED_RUNS)
    check_writable(Path(output_path), force)
    return load_segmenter(bank_dir, segmenter).segment(input_path, output_path, options, force, progress)


@ranks.fail_together  # torchrun: a rank's failure, wherever it happens, fails every rank
def segment_cases(input_path: str | os.PathLike, output_path: str | os.PathLike, bank_dir: str | os.PathLike,
                  segmenter: SegmenterOptions | None = None, options: SegmentOptions | None = None,
                  layout: str = "auto", force: bool = False,
                  progress: Callable[[str, int, int], None] | None = None) -> list[SegmentSummary]:
    """Segment every case of a file, DICOM folder or dataset folder with one :class:`RagSegmenter`.

    Args:
        input_path: an image file, a DICOM series folder, or a dataset folder (any layout
            :func:`ragsam.data.layouts.discover_cases` understands).
        output_path: output folder (``<case_id>.nii.gz`` per case), or a file for a single case.
        layout: dataset layout of ``input_path`` (``auto`` detects it).
        progress: called as ``progress(case_id, done_slices, total_slices)``.
        Others: as :func:`segment_volume`.
    Returns:
        One summary per case, in case-id order.
    Raises:
        InputError / OutputExistsError: as :func:`segment_volume`; every output is checked
        before any model is loaded.
    """
    from ragsam.data.layouts import discover_cases

    refs = discover_cases(input_path, layout=layout)
    if not refs:
        raise InputError(input_path, "no images found")
    options = options or SegmentOptions()
    options.check(FINE_TUNED_RUNS)
    outputs, companions = case_outputs([ref.case_id for ref in refs], output_path, options.output_format)
    if writes_seg(options.output_format):  # a SEG's refusals (NIfTI input, anonymised series) before any model
        from ragsam.retrieval.bank import SupportBank

        check_seg_inputs(refs, bank_label_names(SupportBank.load(bank_dir)), options.output_format,
                         options.series_uid, bank_dir)
    models = segmenter or SegmenterOptions()
    key = model_key(command="segment", bank=[file_digest(p) for p in sorted(Path(bank_dir).glob("*")) if p.is_file()],
                    run=None if options.run_dir is None else _run_digests(options.run_dir),
                    **models.output_key(), **options.output_key())
    plan = plan_cases(refs, outputs, key, force, companions)  # refuses outputs not ragsam's before any model loads
    loaded = load_segmenter(bank_dir, models) if plan.todo else None

    def work(job: Any) -> tuple[SegmentSummary, dict[str, Any]]:
        assert loaded is not None
        report = None if progress is None else (lambda done, total, cid=job.case_id: progress(cid, done, total))
        summary = loaded.segment(job.ref.image, job.output, options, force=True, progress=report)
        return summary, summary.to_json()

    def from_json(job: Any, recorded: dict[str, Any]) -> SegmentSummary:
        return SegmentSummary(**{**recorded, "skipped": True})

    return run_cases(plan, work, from_json)
