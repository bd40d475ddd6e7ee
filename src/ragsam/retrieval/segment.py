"""Segment a CT volume by retrieval: DINOv2 neighbours from a support bank -> SAM 2 memory (RAG-SAM).

Per volume: read the image (NIfTI / NRRD / MHA or a DICOM series, HU) -> slice it
with the bank's own prepare settings (HU window, slice size) -> embed every slice
with the bank's embedder -> retrieve ``k`` labelled neighbours per slice (with a
relative-z prior by default) -> segment each slice with
:class:`~ragsam.retrieval.sam2_memory.Sam2MemorySegmenter`, the neighbours as
conditioning frames (the best neighbour nearest the query) -> put the label
slices back on the input's grid -> write atomically. With a fine-tuned run
(``run_dir``) its class probabilities are fused with the retrieval probabilities
(:mod:`ragsam.retrieval.hybrid`) before the labels are taken.

Support memories are cached (least recently used first out): neighbouring query
slices mostly retrieve the same support slices, whose image-encoder pass and
memory encoding are then done once. :class:`RagSegmenter` keeps the models and
that cache across volumes. The models are built above this floor and handed in, as
``SAM2ImagePredictor(model)`` receives its model: a built SAM 2 (or weights that
:func:`ragsam.models.sam2.build_sam2` reads) and, for the hybrid, the source of a
fine-tuned run's probabilities. :mod:`ragsam.inference.rag_segment` builds them
(``load_segmenter``: SAM 2 weights or a ``train-rag`` run, ``ragsam train`` runs) and
holds ``segment_volume`` / ``segment_cases``.

The input must look like CT in Hounsfield units: a volume with at least two
slices whose values reach -200 HU or lower (air, lung or fat) and span at least
300 HU. A normalised image ([0, 1]), an 8-bit picture (0..255) or an MR volume is
refused rather than windowed into nonsense.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ragsam.data.case_outputs import check_format, key_parts
from ragsam.data.file_checks import check_ct_values
from ragsam.errors import InputError
from ragsam.retrieval.support_retrieval import retrieve_supports, support_memories
from ragsam.utils.atomic import check_writable
from ragsam.utils.threads import apply_threads

if TYPE_CHECKING:
    from ragsam.data.slices import SliceGrid
    from ragsam.data.volume import Volume

DEFAULT_Z_PRIOR = 0.5
DEFAULT_SAM2 = "facebook/sam2.1-hiera-tiny"


class FineTunedSource(Protocol):
    """The fine-tuned half of the hybrid, handed to :class:`RagSegmenter` by the floor that loads runs
    (:class:`ragsam.inference.rag_segment.FineTunedRuns`)."""

    def check(self, run_dir: str | os.PathLike) -> None:
        """Refuse a folder that is not a usable run (before any model loads)."""

    def probabilities(self, run_dir: str, image: Volume, device: str, batch_size: int) -> tuple[torch.Tensor, SliceGrid]:
        """Class probabilities float32 ``(Z, C, S, S)`` of every slice of ``image`` and the run's slice grid."""


@dataclass(frozen=True)
class SegmentOptions:
    """How a volume is segmented (:meth:`RagSegmenter.segment`, ``segment_volume``, ``segment_cases``): the
    per-call settings; the models' are :class:`ragsam.inference.rag_segment.SegmenterOptions`.

    Attributes:
        k: support slices per query slice (each adds a memory of (image_size/16)^2 tokens).
        exclude_cases: bank cases never used as supports.
        batch_size: query slices per image-encoder / embedder pass.
        series_uid: DICOM series to read when a folder holds several.
        z_prior: weight of the relative-z penalty in retrieval (``None`` / 0: off).
        run_dir: a fine-tuned run to fuse with (hybrid); ``None``: retrieval only.
        hybrid_weight: ``w`` of the retrieval term in the hybrid fusion.
        output_format: ``nifti``, ``dicom-seg`` or ``both`` (:mod:`ragsam.data.case_outputs`).
    """

    k: int = 4
    exclude_cases: tuple[str, ...] = ()
    batch_size: int = 8
    series_uid: str | None = None
    z_prior: float | None = DEFAULT_Z_PRIOR
    run_dir: str | os.PathLike | None = None
    hybrid_weight: float = 0.5
    output_format: str = "nifti"

    def check(self, fine_tuned: FineTunedSource | None = None) -> None:
        """Refuse bad values before any model loads (``fine_tuned`` checks ``run_dir``)."""
        check_request(self.hybrid_weight, self.batch_size, self.run_dir, fine_tuned)
        check_format(self.output_format)

    def output_key(self) -> dict[str, Any]:
        """The options that change an output (batch size does not; the run enters by its files)."""
        return {"k": self.k, "exclude_cases": list(self.exclude_cases), "series_uid": self.series_uid,
                "z_prior": self.z_prior, "hybrid_weight": self.hybrid_weight, **key_parts(self.output_format)}


@dataclass
class SegmentSummary:
    """What :meth:`RagSegmenter.segment` did (all JSON-serialisable via :meth:`to_json`)."""

    input: str
    output: str
    bank: str
    slices: int
    k: int
    organs: list[int]
    support_slices_encoded: int
    support_cache_hits: int
    seconds: float
    sam2: dict[str, Any] = field(default_factory=dict)
    embedder: str = ""
    exclude_cases: list[str] = field(default_factory=list)
    run: str | None = None
    hybrid_weight: float | None = None
    skipped: bool = False  # already written by an earlier run with the same inputs and settings
    seg_output: str | None = None  # the DICOM SEG beside ``output`` (``output_format="both"``)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SupportCache:
    """LRU cache of encoded support slices keyed by ``(case_id, z)`` of one model.

    ``model_key`` names the SAM 2 that encoded them (its weights source, plus the
    ``train-rag`` run and its weights' hash): it is part of every stored key, so
    memories of one model are never served to another.
    """

    def __init__(self, max_items: int, model_key: Hashable = None) -> None:
        self.max_items = max(1, int(max_items))
        self.model_key = model_key
        self.items: OrderedDict[tuple[Hashable, str, int], Any] = OrderedDict()
        self.hits = 0
        self.encoded = 0

    def get(self, key: tuple[str, int]) -> Any | None:
        full = (self.model_key, *key)
        if full in self.items:
            self.items.move_to_end(full)
            self.hits += 1
            return self.items[full]
        return None

    def put(self, key: tuple[str, int], value: Any) -> None:
        full = (self.model_key, *key)
        self.items[full] = value
        self.items.move_to_end(full)
        self.encoded += 1
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)


def check_ct_like(array: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse inputs that are not CT volumes in HU (see module docstring for the rule)."""
    arr = np.asarray(array)
    if arr.ndim != 3 or arr.shape[0] < 2:
        raise InputError(path, f"not a 3D volume (array shape {tuple(arr.shape)}); segment needs a CT volume "
                               "with at least 2 slices")
    check_ct_values(arr, path)


def _embedder_for(bank: Any, embedder: Any, device: str) -> Any:
    from ragsam.retrieval.embedder import build_embedder, identity_mismatch

    if embedder is None:
        return bank.embedder(device=device)
    if isinstance(embedder, (str, os.PathLike)):
        embedder = build_embedder(str(embedder), pooling=bank.identity["pooling"],
                                  image_size=int(bank.identity["image_size"]), device=device,
                                  seed=int(bank.identity.get("seed", 0)))
    problem = identity_mismatch(bank.identity, embedder.identity)
    if problem:
        raise InputError(bank.path, problem)
    return embedder


def check_request(hybrid_weight: float, batch_size: int, run_dir: str | os.PathLike | None,
                  fine_tuned: FineTunedSource | None) -> None:
    """Cheap argument checks, done before any model is loaded."""
    if not 0.0 <= hybrid_weight <= 1.0:
        raise InputError(None, f"hybrid weight must be in [0, 1], got {hybrid_weight!r}")
    if batch_size < 1:
        raise InputError(None, f"batch_size must be >= 1, got {batch_size}")
    if run_dir is not None:
        if fine_tuned is None:
            raise InputError(run_dir, "this segmenter was given no fine-tuned model source for the hybrid "
                                      "(build it with ragsam.inference.rag_segment.load_segmenter)")
        fine_tuned.check(run_dir)  # a bad run folder fails before any work


def check_settings(pointer_positions: str, cache_size: int) -> None:
    """Refuse bad :class:`RagSegmenter` settings before any model is loaded."""
    if pointer_positions not in ("sequential", "shared"):
        raise InputError(None, f"pointer positions must be 'sequential' or 'shared', got {pointer_positions!r}")
    if cache_size < 1:
        raise InputError(None, f"cache_size must be >= 1, got {cache_size}")


class RagSegmenter:
    """A support bank, its embedder, SAM 2 and the support-memory cache, loaded once for many volumes.

    Encoded supports are keyed by ``(case_id, z)`` of the bank slice and do not
    depend on the query, so the cache carries over from one volume to the next:
    segmenting a test set encodes each retrieved support slice once (up to
    ``cache_size`` kept in memory).

    Args:
        bank_dir: a support bank (``ragsam index build``); its prepared cache supplies the supports.
        sam2: a built SAM 2 ``(model, info)`` on ``device`` (:func:`ragsam.models.sam2.build_sam2`, or
            :func:`ragsam.training.rag_model.load_sam2_run` for a ``train-rag`` run, whose ``info``
            carries the ``pointer_positions`` / ``use_empty_supports`` it was trained with: those apply),
            or weights for :func:`~ragsam.models.sam2.build_sam2`.
        embedder: ``None`` (rebuild the bank's embedder), weights, or a ``SliceEmbedder``;
            it must be the embedder the bank was built with.
        cache_size: encoded support slices kept in memory.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        pointer_positions, use_empty_supports: see :class:`~ragsam.retrieval.sam2_memory.Sam2MemorySegmenter`.
        fine_tuned: the hybrid's fine-tuned probabilities (:class:`FineTunedSource`); ``None``: no
            ``run_dir`` in :meth:`segment`.
    Raises:
        InputError: bad bank, other embedder, bad weights, bad settings.
    """

    def __init__(self, bank_dir: str | os.PathLike, sam2: str | tuple[Any, dict[str, Any]] = DEFAULT_SAM2,
                 embedder: Any = None, cache_size: int = 256, device: str = "auto",
                 pointer_positions: str = "sequential", use_empty_supports: bool = True,
                 fine_tuned: FineTunedSource | None = None) -> None:
        from ragsam.models.sam2 import build_sam2
        from ragsam.retrieval.bank import SupportBank
        from ragsam.retrieval.sam2_memory import Sam2MemorySegmenter
        from ragsam.utils.device import resolve_device

        check_settings(pointer_positions, cache_size)
        self.device = str(resolve_device(device))
        self.fine_tuned = fine_tuned
        self.bank_dir = str(bank_dir)
        self.bank = SupportBank.load(bank_dir)
        self.embedder = _embedder_for(self.bank, embedder, self.device)
        if isinstance(sam2, str):
            self.model, self.info = build_sam2(sam2, device=self.device)  # bad weights fail before slices
        else:
            self.model, self.info = sam2
        pointer_positions = self.info.get("pointer_positions", pointer_positions)  # a train-rag run's own
        use_empty_supports = self.info.get("use_empty_supports", use_empty_supports)
        apply_threads(self.model, getattr(self.embedder, "model", None))
        self.seg = Sam2MemorySegmenter(self.model, pointer_positions=pointer_positions,  # type: ignore[arg-type]
                                       use_empty_supports=use_empty_supports)
        self.cache = SupportCache(cache_size, (self.info["source"], self.info.get("run"), self.info.get("run_weights")))

    def reload_bank(self) -> None:
        """Re-read the bank folder after slices were added or removed (``retrieval.bank_edit``).

        Cached support memories stay valid: they are keyed by ``(case_id, z)`` and an
        addition's id is never reused.
        """
        from ragsam.retrieval.bank import SupportBank

        self.bank = SupportBank.load(self.bank_dir)

    def encode_supports(self, neighbours: Sequence[Any]) -> list[Any]:
        """Support memories of ``neighbours`` (bank rows), encoded now and kept in the cache."""
        return support_memories(self.seg, self.bank, self.cache, neighbours)

    def segment(self, input_path: str | os.PathLike, output_path: str | os.PathLike,
                options: SegmentOptions | None = None, force: bool = False,
                progress: Callable[[int, int], None] | None = None,
                own_supports: Mapping[int, np.ndarray] | None = None) -> SegmentSummary:
        """Segment one volume and write its label map.

        Args:
            input_path: CT image file or DICOM series folder (HU).
            output_path: label file to write (``.nii.gz`` recommended), on the input's grid; with
                ``output_format`` ``dicom-seg`` the SEG, with ``both`` the label file (the SEG beside it).
            options: how the volume is segmented (:class:`SegmentOptions`; default: its defaults);
                its ``run_dir`` needs ``fine_tuned``.
            force: replace an existing output.
            progress: called as ``progress(done_slices, total_slices)``.
            own_supports: labelled slices of this very volume (canonical z -> uint8 ``(S, S)``
                labels on the bank's slice grid, e.g. a user's corrections). The nearest one
                joins every query slice's supports as the frame closest to the query (SAM 2
                propagation from the user's own slices), and these slices keep their labels.
                Ignored with a fine-tuned run (hybrid): only the supports change there.
        Raises:
            InputError: bad input image, k out of range, unknown excluded cases, bad options.
            OutputExistsError: the output exists and ``force`` is false (checked before any work).
        """
        from ragsam.data.case_outputs import write_case
        from ragsam.data.dicom_seg import seg_path_for
        from ragsam.data.slices import slices_to_volume, volume_to_slices
        from ragsam.data.volume import read_image

        start = time.perf_counter()
        options = options or SegmentOptions()
        k, batch_size, run_dir, hybrid_weight = options.k, options.batch_size, options.run_dir, options.hybrid_weight
        output_format, series_uid = options.output_format, options.series_uid
        check_request(hybrid_weight, batch_size, run_dir, self.fine_tuned)
        output_path = Path(output_path)
        check_writable(output_path, force)
        seg_output = seg_path_for(output_path) if check_format(output_format) == "both" else None
        if seg_output is not None:
            check_writable(seg_output, force)
        bank = self.bank
        if k < 1 or k > len(bank):
            raise InputError(self.bank_dir, f"k={k} must be between 1 and the bank size ({len(bank)} slices)")
        excluded = sorted({str(c) for c in options.exclude_cases})
        unknown = sorted(set(excluded) - set(bank.case_ids.tolist()))
        if unknown:
            raise InputError(self.bank_dir, f"excluded cases {unknown[:3]} are not in the bank")
        encoded_before, hits_before = self.cache.encoded, self.cache.hits

        image = read_image(input_path, series_uid=series_uid)
        check_ct_like(image.array, input_path)
        settings = bank.prepare_meta().slice_settings
        stack = volume_to_slices(image, None, settings)
        depth, size = stack.images.shape[0], stack.images.shape[-1]
        hits = retrieve_supports(bank, self.embedder, stack.images, k, excluded, options.z_prior, batch_size)
        fused = grid_ft = None
        if run_dir is not None:
            from ragsam.retrieval.hybrid import fuse_slice

            assert self.fine_tuned is not None  # check_request refused run_dir without one
            fused, grid_ft = self.fine_tuned.probabilities(str(run_dir), image, self.device, batch_size)
            if fused.shape[0] != depth:
                raise InputError(run_dir, f"the run slices the volume into {fused.shape[0]} slices, the bank {depth}")

        own = _own_memories(self.seg, stack.images, own_supports or {}, input_path)
        labels = np.zeros((depth, size, size), dtype=np.uint8)
        for first in range(0, depth, batch_size):
            queries = self.seg.encode_images(torch.from_numpy(stack.images[first:first + batch_size]))
            for offset, query in enumerate(queries):
                z = first + offset
                supports = support_memories(self.seg, bank, self.cache, hits[z])  # best nearest the query
                if own:
                    supports.append(own[min(own, key=lambda s, z=z: (abs(s - z), s))][0])
                pred = self.seg.segment(query, supports, output_size=(size, size))
                labels[z] = own[z][1] if z in own else pred.labels.cpu().numpy().astype(np.uint8)
                if fused is not None:
                    fused[z] = fuse_slice(fused[z], pred.organ_ids, pred.probabilities.cpu(), hybrid_weight)
                if progress is not None:
                    progress(z + 1, depth)
        volume = slices_to_volume(labels, stack.grid) if fused is None else slices_to_volume(fused, grid_ft)
        write_case(volume, image, output_path, output_format, force=force, label_names=bank_label_names(bank),
                   series_uid=series_uid, algorithm="RAG" if run_dir is None else "hybrid",
                   model_key=self._seg_model_key(run_dir))
        organs = sorted(int(o) for o in np.unique(volume) if o)
        return SegmentSummary(str(input_path), str(output_path), self.bank_dir, depth, k, organs,
                              self.cache.encoded - encoded_before, self.cache.hits - hits_before,
                              round(time.perf_counter() - start, 3), self.info,
                              str(self.embedder.identity.get("weights")), excluded,
                              None if run_dir is None else str(run_dir),
                              None if run_dir is None else hybrid_weight,
                              seg_output=None if seg_output is None else str(seg_output))

    def _seg_model_key(self, run_dir: str | os.PathLike | None) -> str:
        """What a DICOM SEG names as the model: bank, SAM 2 (weights or train-rag run) and fine-tuned run."""
        sam2 = self.info.get("run") or self.info.get("source") or self.info.get("name")
        parts = [f"bank {Path(self.bank_dir).resolve().name}", f"sam2 {sam2}"]
        if run_dir is not None:
            parts.append(f"run {Path(run_dir).resolve().name}")
        return "; ".join(str(p) for p in parts)


def bank_label_names(bank: Any) -> dict[int, str]:
    """``{id: organ name}`` of the bank's prepared cache (the organs a segmentation can hold)."""
    return bank.prepare_meta().label_names


def _own_memories(seg: Any, images: np.ndarray, own: Mapping[int, np.ndarray],
                  path: str | os.PathLike) -> dict[int, tuple[Any, np.ndarray]]:
    """Encoded supports of a volume's own labelled slices: z -> (memory, uint8 labels (S, S))."""
    out = {}
    for z, lab in sorted(own.items()):
        lab = np.asarray(lab, dtype=np.uint8)
        if not 0 <= int(z) < len(images) or lab.shape != images.shape[1:]:
            raise InputError(path, f"own support slice z={z} {lab.shape} does not fit the {len(images)} slices "
                                   f"of shape {images.shape[1:]}")
        out[int(z)] = (seg.encode_support(images[int(z)], lab, key=("own", int(z))), lab)
    return out
