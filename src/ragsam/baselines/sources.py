"""Where the baseline's cases come from: a raw dataset, one image + labels, or a prepared cache.

Every case yields its axial slices (images in [0, 1], ground-truth labels, the
:class:`~ragsam.data.slices.SliceGrid` back to the original voxel grid) and the
original ground-truth file the prediction is scored against.

* **raw data** (a dataset folder in any layout ``discover_cases`` knows, an
  image file, a DICOM folder): cases are read and paired by physical geometry
  (``load_case``), then sliced with the given :class:`SliceSettings`. Cases
  without labels are skipped (prompts are derived from the ground truth).
* **one image + ``labels``**: a single case whose id is the image's name.
* **a prepared slice cache** (``ragsam prepare`` output): the cached slices are
  used as they are (the cache's window and slice size; ``slice_settings`` is
  ignored), ``split`` picks ``splits.json``'s list (e.g. ``"test"``), and the
  original label files recorded in ``prepare.json`` are the ground truth.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragsam.data.cache_meta import CacheMeta
from ragsam.data.cases import IMAGE_SUFFIXES
from ragsam.data.slices import SliceGrid, SliceSettings, SliceStack
from ragsam.errors import InputError


@dataclass
class BaselineCase:
    """One case to segment.

    Attributes:
        case_id: the case id (prediction file name ``<case_id>.nii.gz``).
        gt_path: the original ground-truth label file.
        image_path: the CT file or DICOM folder (for overlays), if known.
        load: returns the case's :class:`SliceStack` (``labels`` never None).
    """

    case_id: str
    gt_path: Path
    image_path: Path | None
    load: Callable[[], SliceStack]


def is_prepared_cache(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder written by ``ragsam prepare``."""
    return (Path(path) / "prepare.json").is_file()


def _case_id_of_file(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem or name


def _select(ids: list[str], wanted: list[str] | None, source: str | os.PathLike) -> list[str]:
    if wanted is None:
        return ids
    unknown = [c for c in wanted if c not in ids]
    if unknown:
        raise InputError(source, f"unknown case id(s) {unknown[:8]} (available: {', '.join(ids[:12])}"
                                 + (" ..." if len(ids) > 12 else "") + ")")
    return [c for c in ids if c in set(wanted)]


def _raw_loader(ref: object, settings: SliceSettings, series_uid: str | None) -> Callable[[], SliceStack]:
    def load() -> SliceStack:
        from ragsam.data.cases import load_case
        from ragsam.data.slices import volume_to_slices

        case = load_case(ref, series_uid=series_uid)
        return volume_to_slices(case.image, case.labels, settings)

    return load


def raw_cases(data: str | os.PathLike, labels: str | os.PathLike | None = None, layout: str = "auto",
              case_ids: list[str] | None = None, slice_settings: SliceSettings | None = None,
              series_uid: str | None = None) -> tuple[list[BaselineCase], list[str]]:
    """Cases of a raw dataset (or one image with ``labels``).

    Returns:
        (labelled cases sorted by id, ids of skipped unlabelled cases).
    Raises:
        InputError: nothing labelled, unknown ``case_ids``, unreadable layout.
    """
    from ragsam.data.cases import CaseRef

    settings = slice_settings or SliceSettings()
    data = Path(data)
    if labels is not None:
        labels = Path(labels)
        if not labels.is_file():
            raise InputError(labels, "ground-truth label file does not exist")
        if not data.exists():
            raise InputError(data, "image does not exist")
        refs = [CaseRef(_case_id_of_file(data), data, labels)]
    else:
        from ragsam.data.layouts import discover_cases

        refs = discover_cases(data, layout)
    skipped = sorted(r.case_id for r in refs if r.labels is None)
    by_id = {r.case_id: r for r in refs if r.labels is not None}
    if not by_id:
        raise InputError(data, "no case with ground-truth labels found: prompts are derived from the ground "
                               "truth (give --gt LABELS for a single image)")
    chosen = _select(sorted(by_id), case_ids, data)
    cases = [BaselineCase(cid, Path(by_id[cid].labels), Path(by_id[cid].image),
                          _raw_loader(by_id[cid], settings, series_uid)) for cid in chosen]
    return cases, skipped


def _cache_loader(case_dir: Path) -> Callable[[], SliceStack]:
    def load() -> SliceStack:
        try:
            images = np.load(case_dir / "image.npy").astype(np.float32)
            labels = np.load(case_dir / "label.npy")
            grid = SliceGrid.read(case_dir)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(case_dir, f"unreadable cached case ({exc}); run `ragsam prepare` again") from None
        return SliceStack(images=images, labels=labels, grid=grid)

    return load


def _recorded_files(meta: CacheMeta, cid: str, cache: Path) -> tuple[Path, Path | None]:
    """(labels file, image file or DICOM folder) of a cached case, as recorded by ``prepare``."""
    case = meta.cases.get(cid)
    files = case.files if case is not None else []
    label_files = [Path(f["path"]) for f in files if f.get("role") == "labels"]
    image_files = [Path(f["path"]) for f in files if f.get("role") == "image"]
    if len(label_files) != 1:
        raise InputError(cache / "prepare.json", f"case {cid!r} has no recorded label file")
    gt = label_files[0]
    record = next(f for f in files if f.get("role") == "labels")
    if not gt.is_file():
        raise InputError(gt, f"ground truth of cached case {cid!r} no longer exists (the cache was built "
                             f"from {meta.source}); the baseline scores against the original labels")
    if gt.stat().st_size != record.get("size"):
        raise InputError(gt, f"changed since `ragsam prepare` built {cache} (size {gt.stat().st_size} != "
                             f"{record.get('size')}); run `ragsam prepare` again")
    image: Path | None = None
    if len(image_files) == 1:
        image = image_files[0]
    elif image_files:  # a DICOM series: its folder
        image = image_files[0].parent
    return gt, image if image is not None and image.exists() else None


def cached_cases(cache: str | os.PathLike, split: str | None = None,
                 case_ids: list[str] | None = None) -> tuple[list[BaselineCase], CacheMeta]:
    """Cases of a prepared slice cache.

    Args:
        cache: the ``ragsam prepare`` folder.
        split: a key of ``splits.json`` (``"test"``, ``"train"``), or None for every case.
        case_ids: further restrict to these ids.
    Returns:
        (cases sorted by id, the cache's ``prepare.json``).
    """
    from ragsam.data.splits import Splits

    cache = Path(cache)
    meta = CacheMeta.read(cache)
    ids = sorted(meta.cases)
    if split is not None:
        splits = Splits.read(cache)
        members = splits.named.get(split)
        if members is None:
            raise InputError(cache / "splits.json", f"no split {split!r} (available: {', '.join(splits.names())})")
        if not members:
            raise InputError(cache / "splits.json", f"split {split!r} is empty")
        ids = [c for c in ids if c in set(members)]
    ids = _select(ids, case_ids, cache)
    cases = []
    for cid in ids:
        gt, image = _recorded_files(meta, cid, cache)
        cases.append(BaselineCase(cid, gt, image, _cache_loader(cache / "cases" / cid)))
    return cases, meta
