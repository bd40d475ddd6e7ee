"""Evaluate predicted label volumes against ground truth: one pair of files or two folders of cases.

Case ids come from file names (:func:`case_id_from_name`):

1. drop the extension (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``);
2. drop a trailing nnU-Net channel suffix ``_0000``;
3. drop a trailing role word after ``_``, ``-`` or ``.``: ``pred``, ``prediction``,
   ``seg``, ``segmentation``, ``gt``, ``label(s)``, ``mask``, ``img``, ``image``;
4. drop a leading role word (same words) when a separator or a digit follows it.

So ``img0001.nii.gz`` / ``label0001.nii.gz`` (BTCV) -> ``0001``;
``FLARE22_Tr_0001_0000.nii.gz`` / ``FLARE22_Tr_0001.nii.gz`` -> ``FLARE22_Tr_0001``;
``case0001_pred.nii.gz`` / ``case0001_gt.nii.gz`` -> ``case0001``. A name that
would become empty keeps its stem. For a single pair of files whose ground-truth
name is only a role word (``labels.nii.gz``), the case id is its folder's name. Only files with the extensions above are
considered (hidden files and other files are ignored); in an ``images`` folder,
sub-folders count as DICOM series named by their folder name. Two files with one
case id in a folder, and cases present on one side only, are refused.

Every prediction is paired with its ground truth by physical geometry
(:func:`ragsam.data.volume.read_labels` with ``reference``): the same voxels in
another axis order / orientation are accepted, other grids refused with how they
differ. With ``images``, the ground truth is first brought onto the image grid.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragsam.data.cases import IMAGE_SUFFIXES
from ragsam.errors import InputError, OutputExistsError
from ragsam.evaluation.metrics import (
    ABSENT_RULES,
    Absent,
    Hd95Units,
    compute_case_metrics,
    nsd_tolerances,
    spacing_zyx,
)
from ragsam.evaluation.report import write_report
from ragsam.evaluation.results import CasePaths, EvaluationResult, MetricRow
from ragsam.utils import ranks
from ragsam.utils.atomic import atomic_dir
from ragsam.utils.jobs import map_cases, resolve_jobs

if TYPE_CHECKING:
    from ragsam.data.label_maps import LabelMap

SUFFIXES = IMAGE_SUFFIXES
_ROLE = r"(?:prediction|pred|segmentation|seg|gt|labels|label|mask|images|image|img)"
_ROLE_SUFFIX = re.compile(rf"[_\-.]{_ROLE}$", re.IGNORECASE)
_ROLE_PREFIX = re.compile(rf"^{_ROLE}(?:[_\-.]|(?=\d))", re.IGNORECASE)


def _strip_extension(name: str) -> str | None:
    low = name.lower()
    for suffix in SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def case_id_from_name(name: str) -> str:
    """The case id of a file name (rules in the module docstring)."""
    stem = _strip_extension(name)
    stem = name if stem is None else stem
    cid = stem[:-5] if stem.endswith("_0000") and len(stem) > 5 else stem
    cid = _ROLE_SUFFIX.sub("", cid)
    cid = _ROLE_PREFIX.sub("", cid)
    return cid or stem


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def list_case_files(folder: Path, allow_dirs: bool = False) -> dict[str, Path]:
    """Case id -> file for the label/image files directly inside ``folder``.

    Raises:
        InputError: two files with one case id, or no usable file at all.
    """
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if not allow_dirs:
                continue
            cid = entry.name
        elif _strip_extension(entry.name) is None:
            continue
        else:
            cid = case_id_from_name(entry.name)
        if cid in found:
            raise InputError(folder, f"case id {cid!r} comes from two files: {found[cid].name!r} and {entry.name!r}")
        found[cid] = entry
    if not found:
        kinds = "image files or DICOM folders" if allow_dirs else "label files"
        raise InputError(folder, f"contains no {kinds} ({', '.join(SUFFIXES)})")
    return found


def _quote_ids(ids: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def match_cases(pred: str | os.PathLike, gt: str | os.PathLike,
                images: str | os.PathLike | None = None) -> list[CasePaths]:
    """Pair predictions, ground truth and (optionally) images by case id.

    Args:
        pred: a prediction file or a folder of them.
        gt: a ground-truth file or folder (same kind as ``pred``).
        images: optional CT: the image file / DICOM folder for a single pair, or a
            folder of images (files or DICOM sub-folders) named by case id.
    Returns:
        The cases, sorted by case id (natural order).
    Raises:
        InputError: missing paths, a file paired with a folder, duplicate or unmatched case ids.
    """
    pred, gt = Path(pred), Path(gt)
    for p in (pred, gt) if images is None else (pred, gt, Path(images)):
        if not p.exists():
            raise InputError(p, "does not exist")
    if pred.is_dir() != gt.is_dir():
        kind = ("a folder", "a file") if pred.is_dir() else ("a file", "a folder")
        raise InputError(pred, f"is {kind[0]} but the ground truth {gt} is {kind[1]}; give two files or two folders")
    if not pred.is_dir():
        cid = case_id_from_name(gt.name)
        if _ROLE_PREFIX.sub("", cid + "_") == "" and gt.parent.name:  # e.g. case7/labels.nii.gz -> case7
            cid = gt.resolve().parent.name
        return [CasePaths(cid, pred, gt, None if images is None else Path(images))]
    preds, gts = list_case_files(pred), list_case_files(gt)
    no_pred = sorted(set(gts) - set(preds), key=_natural_key)
    no_gt = sorted(set(preds) - set(gts), key=_natural_key)
    if no_pred or no_gt:
        problems = []
        if no_pred:
            problems.append(f"no prediction for {_quote_ids(no_pred)}")
        if no_gt:
            problems.append(f"no ground truth in {gt} for {_quote_ids(no_gt)}")
        raise InputError(pred, "cases do not match the ground truth: " + "; ".join(problems))
    ids = sorted(gts, key=_natural_key)
    image_files: dict[str, Path] = {}
    if images is not None:
        images = Path(images)
        if not images.is_dir():
            raise InputError(images, "must be a folder of images named by case id when --pred/--gt are folders")
        image_files = list_case_files(images, allow_dirs=True)
        missing = [cid for cid in ids if cid not in image_files]
        if missing:
            raise InputError(images, f"no image for case(s) {_quote_ids(missing)}")
    return [CasePaths(cid, preds[cid], gts[cid], image_files.get(cid)) for cid in ids]


NAMED_SUBSETS = ("paper-8", "btcv-table1")


def select_organs(label_map: LabelMap, organs: str | Sequence[int | str] | None
                  ) -> tuple[LabelMap, list[int], dict[int, int] | None]:
    """Which organs to score, and under which label map.

    Args:
        label_map: the map the label files are written in.
        organs: ``None`` (every organ of ``label_map``); a named subset - ``"paper-8"``
            (the 8 organs of the paper's Tables 2-4, in their column order) or
            ``"btcv-table1"`` (Table 1's 12 columns, both adrenal glands merged into one
            class) - scored under the subset's own map (ids 1..n, files converted by
            organ name); or ids / organ names of ``label_map`` (in the given order).
    Returns:
        ``(map to report under, organ ids in column order, conversion from the files'
        ids or None)``.
    Raises:
        InputError: an unknown id or name (quoted), or a subset organ the map lacks.
    """
    from ragsam.data.label_maps import BTCV_TABLE1, PAPER_8, subset_label_map

    if organs is None:
        return label_map, label_map.organ_ids, None
    if isinstance(organs, str) and organs.strip().lower() in NAMED_SUBSETS:
        key = organs.strip().lower()
        classes = BTCV_TABLE1 if key == "btcv-table1" else tuple((n, (n,)) for n in PAPER_8)
        try:
            subset = subset_label_map(label_map, f"{key}:{label_map.name}", classes)
        except KeyError as exc:
            raise InputError(None, f"--organs {key}: {exc.args[0]}") from None
        return subset, subset.organ_ids, subset.source_maps[label_map.name]
    items = [organs] if isinstance(organs, (str, int)) else list(organs)
    ids: list[int] = []
    for item in items:
        text = str(item).strip()
        try:
            oid = int(text) if text.lstrip("+-").isdigit() else label_map.id_of(text)
        except KeyError:
            oid = -1
        if oid <= 0 or oid not in label_map.labels:
            raise InputError(None, f"organ {item!r} is not in label map {label_map.name!r} "
                                   f"(organs {label_map.organ_ids[0]}..{label_map.organ_ids[-1]} or their names, "
                                   f"or {' / '.join(NAMED_SUBSETS)})")
        if oid not in ids:
            ids.append(oid)
    if not ids:
        raise InputError(None, "no organs selected")
    return label_map, ids, None


@dataclass(frozen=True)
class _CaseTask:
    """Everything one worker needs to score one case (picklable)."""

    case: CasePaths
    file_map: LabelMap
    conversion: dict[int, int] | None
    organ_ids: list[int]
    names: dict[int, str]
    tolerances: dict[int, float]
    absent: Absent
    hd95_units: Hd95Units
    overlay_labels: dict[int, str]
    overlay_dir: Path | None


def _score_case(task: _CaseTask) -> tuple[list[MetricRow], str | None]:
    """Read one case, score every organ, draw its overlay; ``(rows, overlay path relative to out)``."""
    from ragsam.data.label_maps import check_label_ids, remap_labels
    from ragsam.data.volume import pair_to_reference, read_image, read_labels

    case = task.case
    image = read_image(case.image) if case.image is not None else None
    gt_vol = read_labels(case.gt)
    if image is not None:
        gt_vol = pair_to_reference(gt_vol, image)
    pred_vol = read_labels(case.pred, reference=gt_vol)
    check_label_ids(gt_vol, task.file_map)
    check_label_ids(pred_vol, task.file_map)
    if task.conversion is not None:
        gt_vol = replace(gt_vol, array=remap_labels(gt_vol.array, task.conversion))
        pred_vol = replace(pred_vol, array=remap_labels(pred_vol.array, task.conversion))
    metrics = compute_case_metrics(pred_vol.array, gt_vol.array, spacing_zyx(gt_vol.geometry.spacing),
                                   task.organ_ids, task.tolerances, task.absent, task.hd95_units)
    rows = [MetricRow(case.case_id, m.organ_id, task.names[m.organ_id], m.dice, m.hd95, m.nsd,
                      m.gt_voxels, m.pred_voxels, m.nsd_tolerance_mm) for m in metrics]
    if task.overlay_dir is None:
        return rows, None
    from ragsam.evaluation.overlays import draw_overlay

    png = draw_overlay(gt_vol, pred_vol, task.overlay_labels, task.overlay_dir / f"{case.case_id}.png",
                       image=image, title=case.case_id)
    return rows, f"overlays/{png.name}"


@ranks.fail_together  # torchrun: a rank's failure, wherever it happens, fails every rank
@dataclass(frozen=True)
class EvaluationOptions:
    """How :func:`evaluate` scores (settings; the files and the output folder are per call).

    Attributes:
        label_map: a ``LabelMap``, ``"btcv"``, ``"flare22"`` or a label-map JSON path.
        nsd_tolerance_mm: NSD tolerance in mm, or ``"flare22"`` (per organ).
        absent: ``"strict"`` or ``"samed"`` (see :mod:`ragsam.evaluation.metrics`).
        organs: ``None`` (all organs of the map), a named subset (``"paper-8"``,
            ``"btcv-table1"``) or a list of ids / organ names.
        overlays: draw one PNG per case into ``out_dir/overlays`` (needs ``out_dir``).
        hd95_units: ``"mm"`` or ``"voxels"`` (SAMed's unit-less HD95).
        jobs: worker processes, one case each at a time (default: the cores available;
            :mod:`ragsam.utils.jobs`); the result is the same for any number. Workers are
            spawned, so a script that calls :func:`evaluate` with ``jobs != 1`` needs the usual
            ``if __name__ == "__main__":`` guard (or pass ``jobs=1``).
    """

    label_map: Any = "btcv"
    nsd_tolerance_mm: float | str = "flare22"
    absent: Absent = "strict"
    organs: str | Sequence[int | str] | None = None
    overlays: bool = True
    hd95_units: Hd95Units = "mm"
    jobs: int | None = None


def evaluate(pred: str | os.PathLike, gt: str | os.PathLike, options: EvaluationOptions = EvaluationOptions(),
             out_dir: str | os.PathLike | None = None, force: bool = False,
             images: str | os.PathLike | None = None) -> EvaluationResult:
    """Dice, HD95 and NSD per case x organ, aggregated in the paper's layout.

    Args:
        pred: predicted label file, or folder of them (matched to ``gt`` by case id).
        gt: ground-truth label file or folder.
        options: how to score (:class:`EvaluationOptions`).
        out_dir: if given, write metrics.csv, metrics.json, report.md and overlays/ there
            (the folder appears whole or not at all).
        force: replace an existing ``out_dir``.
        images: CT image(s) to draw under the overlays (see :func:`match_cases`).
    Returns:
        :class:`EvaluationResult`.
    Raises:
        InputError: unreadable or unmatched inputs, mismatched geometry, unknown label ids.
        OutputExistsError: ``out_dir`` exists and ``force`` is false.
    """
    from ragsam.data.label_maps import load_label_map

    label_map, nsd_tolerance_mm, absent, organs = options.label_map, options.nsd_tolerance_mm, options.absent, options.organs
    overlays, hd95_units, jobs = options.overlays, options.hd95_units, options.jobs
    if out_dir is not None and Path(out_dir).exists() and not force:
        raise OutputExistsError(out_dir)  # refuse before the (long) evaluation
    if absent not in ABSENT_RULES:
        raise InputError(None, f"absent rule {absent!r} is not one of {', '.join(ABSENT_RULES)}")
    if hd95_units not in ("mm", "voxels"):
        raise InputError(None, f"HD95 units {hd95_units!r} are not 'mm' or 'voxels'")
    file_map = load_label_map(label_map)
    lmap, organ_ids, conversion = select_organs(file_map, organs)
    names = {oid: lmap.labels[oid] for oid in organ_ids}
    tolerances = nsd_tolerances(names, nsd_tolerance_mm)
    cases = match_cases(pred, gt, images)
    settings: dict[str, Any] = {
        "pred": str(pred), "gt": str(gt), "images": None if images is None else str(images),
        "label_map": lmap.name, "label_file_map": file_map.name, "organ_ids": organ_ids,
        "organs": [names[i] for i in organ_ids],
        "nsd_tolerance": nsd_tolerance_mm if isinstance(nsd_tolerance_mm, str) else float(nsd_tolerance_mm),
        "nsd_tolerance_mm": {str(i): tolerances[i] for i in organ_ids}, "absent": absent,
        "hd95_units": hd95_units, "hd95_definition": "max of directed 95th percentiles (MONAI)"
        if absent == "strict" else "95th percentile of pooled distances (medpy, as SAMed)",
        "surface": "MONAI voxel surfaces (binary erosion), Euclidean distances between voxel centres",
    }
    result = EvaluationResult([], cases, organ_ids, [names[i] for i in organ_ids], settings)

    def score(selected: list[CasePaths], overlay_dir: Path | None) -> list[tuple[list[MetricRow], str | None]]:
        tasks = [_CaseTask(case, file_map, conversion, organ_ids, names, tolerances, absent, hd95_units,
                           lmap.labels, overlay_dir) for case in selected]
        return map_cases(_score_case, tasks, resolve_jobs(jobs, len(tasks)))

    def collect(scored: list[tuple[list[MetricRow], str | None]]) -> None:
        for case, (rows, overlay) in zip(cases, scored, strict=True):
            result.rows += rows
            if overlay is not None:
                result.overlays[case.case_id] = overlay

    if ranks.current().world > 1:  # torchrun: cases sharded by rank, rank 0 writes the folder
        return _evaluate_sharded(result, score, collect, out_dir, overlays, force)
    if out_dir is None:
        collect(score(cases, None))
        return result
    with atomic_dir(out_dir, force=force) as tmp:
        collect(score(cases, tmp / "overlays" if overlays else None))
        write_report(result, tmp)
    result.out_dir = Path(out_dir)
    return result


def _evaluate_sharded(result: EvaluationResult, score: Any, collect: Any, out_dir: str | os.PathLike | None,
                      overlays: bool, force: bool) -> EvaluationResult:
    """:func:`evaluate` under torchrun: every rank scores its shard (overlays into a staging
    folder beside ``out_dir``), all ranks receive every row, rank 0 writes ``out_dir``."""
    import shutil

    staging = None
    if out_dir is not None and overlays:
        staging = Path(out_dir).parent / f".{Path(out_dir).name}.overlays.tmp"

        def fresh_staging() -> None:
            shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
            staging.mkdir(parents=True)

        ranks.on_main(fresh_staging)
    try:
        collect(ranks.gather_results(lambda selected: score(selected, staging), result.cases))
    except Exception:
        if staging is not None and ranks.current().is_main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir is None:
        return result

    def write() -> None:
        with atomic_dir(out_dir, force=force) as tmp:
            if staging is not None:
                shutil.move(str(staging), str(tmp / "overlays"))
            write_report(result, tmp)

    ranks.on_main(write)
    result.out_dir = Path(out_dir)
    return result
