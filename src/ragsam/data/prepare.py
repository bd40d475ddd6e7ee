"""``ragsam prepare``: a dataset folder -> an incremental cache of canonical axial slices.

Layout of the cache (see docs/architecture.md)::

    prepared/
      prepare.json      format/version, complete flag, settings, label map, layout, source, split,
                        cases: {id: {key, image, labels, files: [{role, path, size, mtime_ns,
                        sha1}], slices}}
      label_map.json    {"name": ..., "labels": {"0": "background", ...}}
      splits.json       {"train": [...], "test": [...]} (+ "folds" for k-fold)
      manifest.csv      one row per slice (see MANIFEST_COLUMNS)
      cases/<id>/image.npy   float16 (Z, S, S) in [0, 1], canonical LPS, inferior slice first
      cases/<id>/label.npy   uint8   (Z, S, S)
      cases/<id>/grid.json   SliceGrid (the way back to the original voxel grid)

Incremental updates: a case is rebuilt only when its *content* fingerprint changed
(SHA-1 of every input file: the image file or every file of its DICOM folder, and
the label file; for ``.mhd``/``.nhdr`` headers also the data file they name) or the settings key changed (HU window, slice size, label map,
DICOM series, cache version). Hashing whole files is robust to copies and
``touch``; to keep re-runs fast, a file whose path, size and modification time
are unchanged keeps its recorded hash (the stat-cache idea of git). Unchanged
cases are reused, cases gone from the source are removed.

Crash safety: the new version of the cache is built in a temporary sibling
(``atomic_dir``): unchanged cases are hard-linked from the old cache (no copy), changed
ones are built, files that are not ours are copied, and the two folders are exchanged
in one step once everything is written. A refused input or a kill at any moment
therefore leaves the previous cache exactly as it was (and a new cache folder absent);
the next run removes the dead attempt's temporary folder. The cache's folder lock
(:mod:`ragsam.utils.locking`) keeps a second ``prepare`` out while one is writing.

Unlabelled cases (e.g. nnU-Net ``imagesTs``) are skipped and reported: the cache
feeds training and the retrieval support bank, which both need labels.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragsam import __version__
from ragsam.data.cache_meta import CachedCase, CacheMeta
from ragsam.data.fingerprint import settings_key
from ragsam.data.slice_dataset import MANIFEST_COLUMNS
from ragsam.data.slices import SliceGrid, SliceSettings, volume_to_slices
from ragsam.errors import InputError
from ragsam.utils.atomic import atomic_dir, remove_stale_temporaries, write_json, write_text
from ragsam.utils.fault_points import pause_at
from ragsam.utils.file_fingerprint import fingerprint_case
from ragsam.utils.folders import copy_entries, link_tree
from ragsam.utils.jobs import map_cases, resolve_jobs
from ragsam.utils.locking import folder_lock

CASE_FILES = ("image.npy", "label.npy", "grid.json")


@dataclass
class PrepareSummary:
    """What :func:`prepare_dataset` did.

    Attributes:
        out_dir: the cache folder.
        cases: case ids in the cache (sorted).
        built / reused / removed: case ids rebuilt, kept unchanged, deleted (no longer in the source).
        skipped_unlabelled: source cases without labels (not cached).
        slices: total number of slices in the manifest.
        organ_slices: organ id -> number of slices showing it.
        splits: the content of ``splits.json``.
        seconds: wall time.
    """

    out_dir: Path
    cases: list[str]
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped_unlabelled: list[str] = field(default_factory=list)
    slices: int = 0
    organ_slices: dict[int, int] = field(default_factory=dict)
    splits: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _check_output(out_dir: Path, force: bool) -> CacheMeta | None:
    """Previous cache metadata (None for another cache version: rebuild everything);
    refuse a non-empty folder that is not a ragsam cache (unless force)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output exists and is not a folder")
    is_cache, meta = CacheMeta.peek(out_dir) if out_dir.is_dir() else (False, None)
    if not is_cache and out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise InputError(out_dir, "output folder is not empty and is not a ragsam slice cache (use --force to write into it)")
    return meta


def _write_case(case_dir: Path, stack: Any) -> None:
    with atomic_dir(case_dir, force=True) as tmp:
        np.save(tmp / "image.npy", stack.images.astype(np.float16))
        np.save(tmp / "label.npy", stack.labels.astype(np.uint8))
        (tmp / "grid.json").write_text(json.dumps(stack.grid.to_json(), indent=2) + "\n", encoding="utf-8")


def _build_cases(out: Path, tmp: Path, plan: dict[str, dict[str, Any]], old_cases: dict[str, CachedCase], lmap: Any,
                 settings: SliceSettings, series_uid: str | None,
                 progress: Callable[[str, int, int], None] | None, jobs: int | None = None
                 ) -> tuple[list[str], list[str]]:
    """Fill ``tmp`` (the cache's next version) from ``out`` (its current one) and the plan.

    Reused cases are hard-linked, changed ones built from their inputs; entries of ``out``
    that ragsam did not write are copied; the changed cases are built in ``jobs`` worker
    processes (:mod:`ragsam.utils.jobs`). Returns ``(built, removed)`` case ids.
    """
    ours = {"prepare.json", "label_map.json", "splits.json", "manifest.csv", "cases"}
    copy_entries(out, tmp, lambda p: p.name not in ours)
    (tmp / "cases").mkdir()
    old_dirs = [p for p in sorted((out / "cases").iterdir())] if (out / "cases").is_dir() else []
    mine = {p.name for p in old_dirs if p.is_dir() and (p.name in old_cases or (p / "grid.json").is_file())}
    removed = sorted(mine - set(plan))
    copy_entries(out / "cases", tmp / "cases",
                 lambda p: p.name not in mine and not (p.name.startswith(".") and p.name.endswith(".tmp")))
    for cid, p in sorted(plan.items()):
        if p["reuse"]:
            link_tree(out / "cases" / cid, tmp / "cases" / cid)
    to_build = [(p["ref"], series_uid, lmap, settings, tmp / "cases" / cid)
                for cid, p in sorted(plan.items()) if not p["reuse"]]
    built: list[str] = []

    def done(cid: str) -> None:
        built.append(cid)
        pause_at("prepare:case-built")
        if progress is not None:
            progress(cid, len(built), len(to_build))

    map_cases(_build_case, to_build, resolve_jobs(jobs, len(to_build)), on_result=done)
    return built, removed


def _build_case(task: tuple[Any, str | None, Any, SliceSettings, Path]) -> str:
    """Read, convert, slice and write one case (a worker of ``--jobs``); returns its id."""
    from ragsam.data.cases import load_case
    from ragsam.data.file_checks import check_ct_values

    ref, series_uid, lmap, settings, case_dir = task
    case = load_case(ref, series_uid=series_uid)
    check_ct_values(case.image.array, ref.image)
    _write_case(case_dir, volume_to_slices(case.image, convert_labels(case.labels, lmap), settings))
    return case_dir.name


def _case_rows(case_dir: Path, case_id: str, split: str) -> list[list[Any]]:
    """Manifest rows of one cached case (organs present per slice, from label.npy)."""
    labels = np.load(case_dir / "label.npy", mmap_mode="r")
    grid = SliceGrid.read(case_dir)
    depth = labels.shape[0]
    g = grid.geometry
    rows = []
    for z in range(depth):
        present = np.flatnonzero(np.bincount(np.asarray(labels[z]).ravel(), minlength=256)[1:]) + 1
        rel = z / (depth - 1) if depth > 1 else 0.0
        rows.append([case_id, z, f"{rel:.6f}", ";".join(str(int(o)) for o in present), *g.size,
                     *(f"{s:.6g}" for s in g.spacing), split])
    return rows


def convert_labels(labels: Any, label_map: Any) -> Any:
    """Check (and, for a subset map, convert) a label volume against ``label_map``.

    A map with a ``source_label_map`` (``btcv-table1``, ``paper-8``, or a JSON file that
    declares one) describes data labelled in another id scheme: the first scheme whose ids
    cover every id present is applied (other organs become background as the scheme says).
    Otherwise every id present must be named by the map.

    Raises:
        InputError: ids outside the map (or outside every source scheme), naming the file.
    """
    from ragsam.data.label_maps import check_label_ids, present_ids, remap_labels
    from ragsam.data.volume import Volume

    if label_map.source_maps:
        present = present_ids(labels.array)
        for mapping in label_map.source_maps.values():
            if set(present) <= {0, *mapping}:
                return Volume(remap_labels(labels.array, mapping, source=labels.path), labels.geometry, labels.path)
        schemes = ", ".join(f"{k} (ids {sorted(m)})" for k, m in label_map.source_maps.items())
        raise InputError(labels.path, f"label ids {present} do not fit the source scheme of label map "
                                      f"{label_map.name!r}: {schemes}")
    check_label_ids(labels, label_map)
    return labels


def make_splits(case_ids: list[str], split: str, seed: int, datasets: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """``splits.json`` content and the manifest's split name of every case.

    ``split``:

    * ``auto``: the paper's split of the first of ``datasets`` (layout, label-map name)
      that is ``btcv`` or ``flare22``, else (or with a single case) ``none``;
    * ``btcv`` (community 24/6, test 0035-0040), ``btcv-even`` (24/6 evenly spaced) or
      ``flare22`` (30/20 evenly spaced): :func:`ragsam.data.splits.paper_split`; with
      another number of cases the test fraction is kept;
    * ``kfold:K``: ``train`` lists every case, ``folds`` holds K ``{"train", "val"}`` folds
      of a seeded shuffle, and a case's manifest split is ``fold<i>``, the fold validating it;
    * ``none``: every case is ``train``.
    """
    from ragsam.data.splits import PAPER_SPLITS, kfold, paper_split

    ids = sorted(case_ids)
    key = split.strip().lower()
    if key == "auto":
        preset = next((d for d in datasets if d in PAPER_SPLITS), None)
        key = preset if preset is not None and len(ids) >= 2 else "none"
    if key == "none":
        return {"train": ids, "test": []}, dict.fromkeys(ids, "train")
    if key in PAPER_SPLITS:
        result = paper_split(ids, key)
        names = {**dict.fromkeys(result["train"], "train"), **dict.fromkeys(result["test"], "test")}
        return {"train": list(result["train"]), "test": list(result["test"])}, names
    if key.startswith("kfold:"):
        try:
            k = int(key.split(":", 1)[1])
        except ValueError:
            raise InputError(None, f"split {split!r}: expected kfold:K with an integer K") from None
        folds = kfold(ids, k, seed)
        names = {c: f"fold{i}" for i, fold in enumerate(folds) for c in fold["val"]}
        return {"train": ids, "test": [], "folds": folds}, names
    raise InputError(None, f"unknown split {split!r} (choose auto, btcv, btcv-even, flare22, kfold:K or none)")


@dataclass(frozen=True)
class PrepareOptions:
    """What cache :func:`prepare_dataset` builds (settings; the folders and the progress hook are per call).

    Attributes:
        settings: HU window, slice size (context is stored as the default for readers).
        layout: ``auto`` or a layout name understood by ``discover_cases``.
        label_map: ``btcv``, ``flare22``, another built-in or a JSON file.
        split: ``auto``, ``btcv``, ``btcv-even``, ``flare22``, ``kfold:K`` or ``none`` (see :func:`make_splits`).
        seed: seed of k-fold shuffles.
        series_uid: DICOM series to read when a folder holds several.
        jobs: worker processes, one case each at a time (default: the cores available;
            :mod:`ragsam.utils.jobs`); the cache is the same for any number. Workers are
            spawned, so a script that calls :func:`prepare_dataset` with ``jobs != 1`` needs the
            usual ``if __name__ == "__main__":`` guard (or pass ``jobs=1``).
    """

    settings: SliceSettings | None = None
    layout: str = "auto"
    label_map: str = "btcv"
    split: str = "auto"
    seed: int = 0
    series_uid: str | None = None
    jobs: int | None = None


def prepare_dataset(source: str | os.PathLike, out_dir: str | os.PathLike,
                    options: PrepareOptions = PrepareOptions(), force: bool = False,
                    progress: Callable[[str, int, int], None] | None = None) -> PrepareSummary:
    """Build or update the slice cache of a dataset (see the module docstring).

    Args:
        source: dataset folder (nnU-Net, MSD, BTCV, FLARE22, pairs), an image file or a DICOM folder.
        out_dir: the cache folder (created; updated in place if it is a ragsam cache).
        options: the cache's settings (:class:`PrepareOptions`).
        force: rebuild every case, and allow writing into a non-empty folder that is not a cache.
        progress: called as ``progress(case_id, n_built, n_to_build)`` after each built case.
    Returns:
        :class:`PrepareSummary`.
    Raises:
        InputError: unreadable inputs, label ids outside the label map, no labelled case,
            or a non-empty non-cache output folder without ``force``.
        FolderLockedError: another process is writing ``out_dir``.
    """
    out = Path(out_dir)
    if out.is_symlink():
        out = out.resolve()  # the new version replaces the folder the link points to
    with folder_lock(out):
        remove_stale_temporaries(out)  # left by a killed run
        return _prepare_locked(source, out, options, force, progress)


def _prepare_locked(source: str | os.PathLike, out: Path, options: PrepareOptions, force: bool,
                    progress: Callable[[str, int, int], None] | None) -> PrepareSummary:
    """:func:`prepare_dataset` while holding the cache's lock.

    Stages: :func:`_check_not_inside` and :func:`_check_output` (refusals before any work),
    :func:`_labelled_cases`, :func:`make_splits`, :func:`_plan_cases` (fingerprints: reuse or
    rebuild), then in one atomic folder :func:`_build_cases` and :func:`_write_index_files`.
    """
    from ragsam.data.label_maps import load_label_map

    settings, layout, label_map, split = options.settings or SliceSettings(), options.layout, options.label_map, options.split
    seed, series_uid, jobs = options.seed, options.series_uid, options.jobs
    start = time.perf_counter()
    _check_not_inside(source, out)
    old = _check_output(out, force)
    lmap = load_label_map(label_map)
    labelled, skipped = _labelled_cases(source, layout)
    base_name = lmap.name.split(":")[-1] if ":" in lmap.name else lmap.name.split("-")[0]
    splits, split_of = make_splits([r.case_id for r in labelled], split, seed, (layout, lmap.name, base_name))
    key_settings = settings_key(settings, lmap, series_uid)
    label_map_json = lmap.to_json()  # keeps source_label_map, so subset maps can convert raw labels later
    old_cases: dict[str, CachedCase] = old.cases if old is not None else {}
    plan = _plan_cases(source, out, labelled, old_cases, key_settings, force)

    meta = CacheMeta(settings=settings.to_json(), label_map=label_map_json, complete=False, ragsam=__version__,
                     source=str(Path(source).resolve()), layout=layout, series_uid=series_uid, split=split,
                     seed=seed)
    with atomic_dir(out, force=True) as tmp:
        built, removed = _build_cases(out, tmp, plan, old_cases, lmap, settings, series_uid, progress, jobs)
        meta.skipped_unlabelled = skipped
        rows = _write_index_files(tmp, plan, split_of, splits, meta)
    organ_slices: dict[int, int] = {}
    for row in rows:
        for organ in filter(None, row[3].split(";")):
            organ_slices[int(organ)] = organ_slices.get(int(organ), 0) + 1
    return PrepareSummary(out_dir=out, cases=sorted(plan), built=built,
                          reused=sorted(c for c in plan if plan[c]["reuse"]),
                          removed=removed, skipped_unlabelled=skipped, slices=len(rows),
                          organ_slices=dict(sorted(organ_slices.items())), splits=splits,
                          seconds=time.perf_counter() - start)


def _check_not_inside(source: str | os.PathLike, out: Path) -> None:
    """Refuse a cache folder inside the dataset folder (it would be read as data on the next run)."""
    src_root, out_root = Path(source).resolve(), out.resolve()
    if src_root.is_dir() and (out_root == src_root or src_root in out_root.parents):
        raise InputError(out, f"the cache must not be inside the dataset folder {src_root} "
                              "(it would be read as data on the next run); choose another output folder")


def _labelled_cases(source: str | os.PathLike, layout: str) -> tuple[list[Any], list[str]]:
    """``(labelled CaseRefs, ids of unlabelled cases)``; refuses a source without any labelled case."""
    from ragsam.data.layouts import discover_cases

    refs = discover_cases(source, layout)
    labelled = [r for r in refs if r.labels is not None]
    skipped = [r.case_id for r in refs if r.labels is None]
    if not labelled:
        raise InputError(source, f"no labelled cases found ({len(refs)} unlabelled); the slice cache needs labels")
    return labelled, skipped


def _plan_cases(source: str | os.PathLike, out: Path, labelled: list[Any], old_cases: dict[str, CachedCase],
                key_settings: str, force: bool) -> dict[str, dict[str, Any]]:
    """Case id -> ``{"ref", "key", "files", "reuse", "inputs"}``: its fingerprint and whether the old copy stays.

    A case is reused when not ``force``, its key is unchanged and all of :data:`CASE_FILES` exist.
    """
    plan: dict[str, dict[str, Any]] = {}
    for ref in labelled:
        if not ref.case_id or ref.case_id.startswith(".") or "/" in ref.case_id or os.sep in ref.case_id:
            raise InputError(source, f"case id {ref.case_id!r} cannot be used as a cache folder name")
        old_case = old_cases.get(ref.case_id)
        key, files = fingerprint_case(ref, key_settings, old_case.files if old_case is not None else None)
        case_dir = out / "cases" / ref.case_id
        reuse = (not force and old_case is not None and old_case.key == key
                 and all((case_dir / f).is_file() for f in CASE_FILES))
        plan[ref.case_id] = {"ref": ref, "key": key, "files": files, "reuse": reuse,
                             "inputs": {"image": str(Path(ref.image).resolve()),
                                        "labels": str(Path(ref.labels).resolve())}}
    return plan


def _write_index_files(tmp: Path, plan: dict[str, dict[str, Any]], split_of: dict[str, str],
                       splits: dict[str, Any], meta: CacheMeta) -> list[list[Any]]:
    """Write ``splits.json``, ``label_map.json``, ``manifest.csv`` and the completed ``prepare.json`` into ``tmp``.

    Returns:
        the manifest rows (one per slice, :data:`MANIFEST_COLUMNS`).
    """
    from ragsam.data.splits import save_splits

    ids = sorted(plan)
    rows = [row for cid in ids for row in _case_rows(tmp / "cases" / cid, cid, split_of.get(cid, ""))]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    save_splits(tmp / "splits.json", splits, force=True)
    write_json(tmp / "label_map.json", meta.label_map)
    write_text(tmp / "manifest.csv", buffer.getvalue())
    per_case = Counter(row[0] for row in rows)
    meta.complete = True
    meta.cases = {cid: CachedCase(p["key"], p["files"], slices=per_case[cid], **p["inputs"])
                  for cid, p in sorted(plan.items())}
    meta.write(tmp)
    return rows
