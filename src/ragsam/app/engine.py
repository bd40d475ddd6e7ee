"""The models behind the app: one :class:`RagSegmenter` (bank + SAM 2) and the fine-tuned run.

Segmentation reuses the command line's code paths unchanged:
:meth:`ragsam.retrieval.segment.RagSegmenter.segment` for RAG and hybrid (with per-slice
progress), :func:`ragsam.inference.predict.predict` for the fine-tuned run. Bank additions
go through :func:`ragsam.retrieval.bank_edit.add_slices` (locked, atomic), after which
the segmenter re-reads the bank and encodes the new supports into its memory cache, so
the very next query can retrieve them.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ragsam.errors import InputError

THUMB_PIXELS = 96


class Engine:
    """Lazily loaded models, shared by the app's worker thread and its request handlers.

    Args:
        bank_dir: support bank (RAG, hybrid, retrieved supports, additions) or None.
        run_dir: fine-tuned run (fine-tuned, hybrid) or None.
        sam2_weights: SAM 2 weights for retrieval (``tiny``, a preset or a folder).
        k: supports per query slice. device: torch device rule (``cpu``, ``auto``...).
    """

    def __init__(self, bank_dir: Path | None, run_dir: Path | None, sam2_weights: str = "tiny", k: int = 4,
                 device: str = "cpu") -> None:
        self.bank_dir, self.run_dir = bank_dir, run_dir
        self.sam2_weights, self.k, self.device = sam2_weights, int(k), device
        self._segmenter = None
        self.lock = threading.RLock()  # one model user at a time (2 CPU cores do not share well)
        self._stacks: OrderedDict[str, Any] = OrderedDict()
        self._settings = None

    # ----------------------------------------------------------------- checks
    def check_mode(self, mode: str) -> None:
        if mode in ("rag", "hybrid") and self.bank_dir is None:
            raise InputError(None, f"mode {mode!r} needs a support bank (start the app with --bank)")
        if mode in ("finetuned", "hybrid") and self.run_dir is None:
            raise InputError(None, f"mode {mode!r} needs a fine-tuned run (start the app with --run)")

    def check_scan(self, path: Path) -> None:
        """The checks ``ragsam segment`` does on its input (readable image, CT in HU)."""
        from ragsam.data.volume import read_image
        from ragsam.retrieval.segment import check_ct_like

        check_ct_like(read_image(path).array, path)

    # ----------------------------------------------------------------- models
    def segmenter(self):
        from ragsam.inference.rag_segment import SegmenterOptions, load_segmenter

        if self.bank_dir is None:
            raise InputError(None, "no support bank (start the app with --bank)")
        with self.lock:
            if self._segmenter is None:
                self._segmenter = load_segmenter(self.bank_dir, SegmenterOptions(self.sam2_weights, device=self.device))
            return self._segmenter

    def settings(self):
        """The bank's slice settings (HU window, size), or the run's when there is no bank."""
        from ragsam.data.slices import SliceSettings

        if self._settings is None:
            if self.bank_dir is not None:
                from ragsam.retrieval.bank import SupportBank

                self._settings = SupportBank.load(self.bank_dir).prepare_meta().slice_settings
            else:  # no bank: only the slice order matters (which slices a correction changed)
                self._settings = SliceSettings()
        return self._settings

    def stack(self, image_path: Path):
        """Slices of an image with the bank's settings (last 4 kept)."""
        from ragsam.data.slices import volume_to_slices
        from ragsam.data.volume import read_image

        key = str(Path(image_path).resolve())
        with self.lock:
            if key not in self._stacks:
                self._stacks[key] = volume_to_slices(read_image(image_path), None, self.settings())
                while len(self._stacks) > 4:
                    self._stacks.popitem(last=False)
            self._stacks.move_to_end(key)
            return self._stacks[key]

    def segment(self, image_path: Path, out: Path, mode: str, progress: Callable[[int, int], None],
                own: Mapping[int, np.ndarray]):
        """Segment one scan into ``out`` (replaced); returns its slice stack."""
        with self.lock:
            stack = self.stack(image_path)
            if mode == "finetuned":
                from ragsam.inference.predict import PredictOptions, predict

                progress(0, 1)
                predict(self.run_dir, image_path, out, PredictOptions(device=self.device), force=True)
                progress(1, 1)
            else:
                from ragsam.retrieval.segment import SegmentOptions

                options = SegmentOptions(k=self.k, run_dir=self.run_dir if mode == "hybrid" else None)
                self.segmenter().segment(image_path, out, options, force=True, progress=progress,
                                         own_supports=dict(own) or None)
            return stack

    # -------------------------------------------------------------- the bank
    def add_slices(self, images: np.ndarray, labels: np.ndarray, source: str, zs: list[int], rel_z: list[float]):
        """Append slices to the bank, re-read it and encode the new supports into the memory cache."""
        from ragsam.retrieval.bank_edit import add_slices

        with self.lock:
            seg = self.segmenter()
            addition = add_slices(self.bank_dir, images, labels, source, zs, rel_z, embedder=seg.embedder,
                                  added_by=os.environ.get("USER"))
            seg.reload_bank()
            bank = seg.bank
            rows = np.flatnonzero(bank.case_ids == addition.id)
            from ragsam.retrieval.bank import Neighbour

            seg.encode_supports([Neighbour(addition.id, int(bank.z[r]), float(bank.rel_z[r]), 1.0, bank.organs[r],
                                           int(r), 1.0) for r in rows])
            return addition

    def canonical_z(self, image_path: Path, ras_mm: tuple[float, float, float]) -> int:
        """Canonical slice (the bank's z order) through a world point given in RAS mm (what NiiVue reports)."""
        grid = self.stack(image_path).grid
        geo = grid.geometry
        lps = np.array([-ras_mm[0], -ras_mm[1], ras_mm[2]], dtype=np.float64)
        matrix = np.asarray(geo.direction, np.float64).reshape(3, 3) * np.asarray(geo.spacing)[None, :]
        index = np.linalg.solve(matrix, lps - np.asarray(geo.origin))  # continuous (x, y, z) voxel index
        axis = grid.axes[2]
        v = int(np.clip(np.rint(index[axis]), 0, geo.size[axis] - 1))
        return geo.size[axis] - 1 - v if grid.flips[2] else v

    def supports(self, image_path: Path, z: int, exclude: list[str]) -> list[dict]:
        """The supports a segmentation retrieves for canonical slice ``z`` of an image.

        Same query as :meth:`RagSegmenter.segment`: the bank's embedder, ``k``, the default
        relative-z prior.
        """
        from ragsam.retrieval.segment import DEFAULT_Z_PRIOR

        with self.lock:
            seg = self.segmenter()
            stack = self.stack(image_path)
            depth = len(stack.images)
            if not 0 <= z < depth:
                raise InputError(None, f"slice {z} is outside the {depth} slices")
            vector = seg.embedder.embed(stack.images[z:z + 1])
            excluded = [c for c in exclude if c in set(seg.bank.case_ids.tolist())]
            hits = seg.bank.query(vector, self.k, seg.embedder.identity, exclude_cases=excluded,
                                  z_prior=DEFAULT_Z_PRIOR, query_rel_z=z / (depth - 1) if depth > 1 else 0.0)[0]
        return [{"case_id": h.case_id, "z": h.z, "similarity": round(h.similarity, 4), "score": round(h.score, 4),
                 "organs": list(h.organs)} for h in hits]

    def thumbnail(self, case_id: str, z: int) -> bytes:
        """PNG of one bank slice, grey with its organs in the reports' colours."""
        from ragsam.retrieval.bank import Neighbour

        with self.lock:
            bank = self.segmenter().bank
            rows = np.flatnonzero((bank.case_ids == case_id) & (bank.z == int(z)))
            if not len(rows):
                raise InputError(None, f"no bank slice {case_id!r} z={z}")
            r = int(rows[0])
            images, labels = bank.support_slices([Neighbour(case_id, int(z), float(bank.rel_z[r]), 0.0,
                                                            bank.organs[r], r, 0.0)])
        return png_overlay(images[0], labels[0])


def png_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> bytes:
    """PNG bytes of a slice in [0, 1] with labels blended in their report colours.

    The slice is canonical (LPS: anterior at the top, patient right on the left of the
    array's columns), shown as radiologists do: row 0 anterior, column 0 patient right.
    """
    from matplotlib.image import imsave

    from ragsam.evaluation.overlays import label_colour

    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    for organ in np.unique(labels):
        if organ:
            mask = labels == organ
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(label_colour(int(organ)), np.float32)
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / THUMB_PIXELS)))
    buffer = io.BytesIO()
    imsave(buffer, rgb[::step, ::step], format="png")
    return buffer.getvalue()
