"""Training-side access to a prepared slice cache (numpy + torch only).

``ragsam prepare`` (:mod:`ragsam.data.prepare`) writes ``cases/<id>/image.npy``
(float16 ``(Z, S, S)`` in [0, 1]) and ``label.npy`` (uint8 ``(Z, S, S)``) plus a
``manifest.csv`` with one row per slice. :class:`SliceDataset` memory-maps those
arrays, so a DataLoader worker reads only the slices it serves.
The resampling and 2.5D helpers it shares with :mod:`ragsam.data.slices` are in
:mod:`ragsam.data.slice_arrays`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ragsam.data.cache_meta import CacheMeta
from ragsam.data.slice_arrays import resize_images, resize_labels, slice_channels
from ragsam.errors import InputError

MANIFEST_COLUMNS = ("case_id", "z", "rel_z", "organs", "orig_x", "orig_y", "orig_z",
                    "spacing_x", "spacing_y", "spacing_z", "split")


@dataclass(frozen=True)
class SliceRecord:
    """One row of ``manifest.csv`` (sizes in voxels, spacings in mm, original (x, y, z) order)."""

    case_id: str
    z: int
    rel_z: float
    organs: tuple[int, ...]
    orig_x: int
    orig_y: int
    orig_z: int
    spacing_x: float
    spacing_y: float
    spacing_z: float
    split: str


def read_manifest(prepared_dir: str | os.PathLike) -> list[SliceRecord]:
    """All slices of a prepared cache, in manifest order (cases sorted, z ascending)."""
    CacheMeta.read(prepared_dir)
    path = Path(prepared_dir) / "manifest.csv"
    records = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
                raise InputError(path, f"unexpected columns {reader.fieldnames!r}")
            for row in reader:
                records.append(SliceRecord(
                    case_id=row["case_id"], z=int(row["z"]), rel_z=float(row["rel_z"]),
                    organs=tuple(int(o) for o in row["organs"].split(";") if o),
                    orig_x=int(row["orig_x"]), orig_y=int(row["orig_y"]), orig_z=int(row["orig_z"]),
                    spacing_x=float(row["spacing_x"]), spacing_y=float(row["spacing_y"]),
                    spacing_z=float(row["spacing_z"]), split=row["split"]))
    except FileNotFoundError:
        raise InputError(path, "missing; run `ragsam prepare` again") from None
    except (KeyError, ValueError) as exc:
        raise InputError(path, f"malformed row ({exc})") from None
    check_cache_arrays(prepared_dir, records)
    return records


def check_cache_arrays(prepared_dir: str | os.PathLike, records: list[SliceRecord]) -> None:
    """Check the cached arrays against the manifest and the label map when a cache is opened.

    Every case of the manifest needs ``image.npy`` and ``label.npy`` of one shape ``(Z, S, S)``
    with ``S`` the cache's slice size, every manifest ``z`` must lie in ``0..Z-1``, and every
    label value must be an id of ``label_map.json``. Shapes come from the ``.npy`` headers
    (memory-mapped); the label check reads the label arrays once (uint8, fast).

    Raises:
        InputError: naming the file at fault.
    """
    from ragsam.data.label_maps import LabelMap, load_label_map

    root = Path(prepared_dir)
    meta = CacheMeta.read(root)
    size = meta.settings.get("size")
    label_file = root / "label_map.json"
    label_map = (load_label_map(label_file) if label_file.is_file()
                 else LabelMap.from_json(meta.label_map, root / "prepare.json"))
    max_id = max(label_map.labels)
    zs: dict[str, int] = {}
    for rec in records:
        if rec.z < 0:
            raise InputError(root / "manifest.csv", f"case {rec.case_id!r} has a row with z={rec.z} < 0")
        zs[rec.case_id] = max(zs.get(rec.case_id, -1), rec.z)
    for case_id, max_z in zs.items():
        folder = root / "cases" / case_id
        arrays = {}
        for name in ("image.npy", "label.npy"):
            if name == "label.npy" and not (folder / name).exists():
                continue  # an unlabelled case (kept for retrieval queries) has no labels
            try:
                arrays[name] = np.load(folder / name, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise InputError(folder / name, f"missing (case {case_id!r} of manifest.csv); "
                                                "run `ragsam prepare` again") from None
            except (OSError, ValueError) as exc:
                raise InputError(folder / name, f"not a readable array ({exc})") from None
        image = arrays["image.npy"]
        label = arrays.get("label.npy", image[:0].astype(np.uint8))
        if image.ndim != 3 or image.shape[1:] != (size, size) or ("label.npy" in arrays and label.shape != image.shape):
            raise InputError(folder / "image.npy", f"shape {tuple(image.shape)} with label.npy "
                                                   f"{tuple(label.shape)}; expected both (Z, {size}, {size})")
        if max_z >= image.shape[0]:
            raise InputError(root / "manifest.csv", f"case {case_id!r} row z={max_z} is outside the "
                                                    f"{image.shape[0]} slices of its image.npy")
        top = int(np.max(label)) if label.size else 0
        if top > max_id or (label.dtype.kind == "i" and int(np.min(label)) < 0):
            raise InputError(folder / "label.npy", f"label value {top} is not an id of label_map.json (0..{max_id})")


class SliceDataset(Dataset):
    """Axial slices of a prepared cache as model-ready tensors.

    Args:
        prepared_dir: folder written by ``ragsam prepare``.
        case_ids: cases to serve (default: all, in manifest order); e.g. ``Splits.read(d).train``.
        context: 0 for single slices, else ``2*context+1`` neighbouring slices as channels.
        size: resize to ``size x size`` on the fly (images bilinear, labels nearest-exact).
        channels: copies of the slice when ``context == 0`` (3 for SAM's RGB input).
        transform: optional callable applied to every item dict (augmentation).

    Items are dicts: ``image`` float32 ``(C, S, S)`` in [0, 1], ``label`` int64 ``(S, S)``,
    ``case_id`` str, ``z`` int (canonical slice index, inferior first).
    """

    def __init__(self, prepared_dir: str | os.PathLike, case_ids: list[str] | None = None, context: int = 0,
                 size: int | None = None, channels: int = 3,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.root = Path(prepared_dir)
        meta = CacheMeta.read(self.root)
        if context < 0 or channels < 1 or (size is not None and size < 1):
            raise InputError(None, f"invalid context={context}, channels={channels} or size={size}")
        self.label_map: dict[int, str] = meta.label_names
        self.num_classes = max(self.label_map) + 1
        self.slice_size = int(meta.settings["size"])
        self.context, self.size, self.channels, self.transform = context, size, channels, transform
        records = read_manifest(self.root)
        known = list(dict.fromkeys(r.case_id for r in records))
        if case_ids is not None:
            missing = [c for c in case_ids if c not in set(known)]
            if missing:
                raise InputError(self.root, f"case ids {missing[:5]!r} are not in the cache (it has {len(known)} cases)")
            wanted = set(case_ids)
            records = [r for r in records if r.case_id in wanted]
        self.records = records
        self.case_ids = [c for c in known if case_ids is None or c in set(case_ids)]
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # memory maps are reopened in each DataLoader worker instead of being pickled
        return {**self.__dict__, "_arrays": {}}

    def __len__(self) -> int:
        return len(self.records)

    def arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Memory maps ``(image float16 (Z, S, S), label uint8 (Z, S, S))`` of one case."""
        if case_id not in self._arrays:
            folder = self.root / "cases" / case_id
            try:
                image = np.load(folder / "image.npy", mmap_mode="r")
                label = np.load(folder / "label.npy", mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise InputError(folder, f"unreadable cached slices ({exc}); rerun `ragsam prepare`") from None
            self._arrays[case_id] = (image, label)
        return self._arrays[case_id]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image, label = self.arrays(record.case_id)
        img = slice_channels(image, record.z, self.context, self.channels).astype(np.float32)
        lab = np.asarray(label[record.z])
        if self.size is not None and self.size != img.shape[-1]:
            img = resize_images(img[None], (self.size, self.size))[0].clamp_(0.0, 1.0).numpy()
            lab = resize_labels(lab, (self.size, self.size))
        item = {"image": torch.from_numpy(np.ascontiguousarray(img)),
                "label": torch.from_numpy(lab.astype(np.int64)),
                "case_id": record.case_id, "z": record.z}
        return self.transform(item) if self.transform is not None else item
