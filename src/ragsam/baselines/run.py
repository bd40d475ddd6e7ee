"""``ragsam baseline``: prompted SAM / MedSAM on every case, then Dice / HD95 / NSD.

Output folder (written as a whole: it appears complete or not at all)::

    OUT/
      predictions/<case_id>.nii.gz   labels on the input image's grid (uint8)
      metrics.csv, metrics.json, report.md   ragsam.evaluation (per case x organ, paper layout)
      overlays/<case_id>.png         ground truth beside prediction (optional)
      baseline.json                  settings, weights, prompt counts and timings per case

Under ``torchrun --nproc_per_node N`` the cases are sharded by rank (``ragsam.utils.ranks``):
rank 0 creates the temporary output folder, every rank writes its cases' predictions into
it and scores its share (``evaluate`` is torchrun-aware), rank 0 writes the shared files
and publishes the folder; the result is the one-process folder (timings aside).

MedSAM is the same code with other weights (Hugging Face
``flaviagiammarino/medsam-vit-base`` or the official ``medsam_vit_b.pth``, both
``sam_vit_b``); it was trained with box prompts, so ``--prompt box`` is its
native use (its point rows are reported by the paper too and run the same way).
Its pixel normalisation differs from SAM's and is chosen automatically (see
:func:`ragsam.baselines.prompted.resolve_normalization`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragsam.baselines.prompted import PromptSettings, resolve_normalization, segment_slices
from ragsam.baselines.sources import BaselineCase, cached_cases, is_prepared_cache, raw_cases
from ragsam.data.cache_meta import CacheMeta
from ragsam.data.cases import IMAGE_SUFFIXES
from ragsam.errors import InputError
from ragsam.utils import ranks
from ragsam.utils.atomic import atomic_dir, check_writable, write_json
from ragsam.utils.threads import apply_threads

MULTIMASK_RULE = {"point1": "3 multimask outputs, highest predicted IoU kept",
                  "point3": "single-mask output (multimask_output=False)",
                  "box": "single-mask output (multimask_output=False)"}


@dataclass
class BaselineSummary:
    """What :func:`run_baseline` did.

    Attributes:
        out_dir: the output folder.
        cases: case ids segmented (sorted).
        predictions: ``out_dir/predictions/<case_id>.nii.gz`` per case.
        evaluation: the :class:`ragsam.evaluation.results.EvaluationResult`.
        prompts: case id -> number of (slice, organ) prompts.
        skipped_unlabelled: raw cases without labels (not segmented).
        settings: what was run (also in ``baseline.json``).
        seconds: wall time.
    """

    out_dir: Path
    cases: list[str]
    predictions: list[Path]
    evaluation: Any
    prompts: dict[str, int] = field(default_factory=dict)
    skipped_unlabelled: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _scoring_ground_truth(case: Any, lmap: Any, folder: Path) -> None:
    """Place the case's ground truth in ``folder`` in the ids of ``lmap``.

    A subset map (``paper-8``, ``btcv-table1``: it has ``source_maps``) describes labels
    stored in another scheme: the original file is converted as ``ragsam prepare`` does;
    otherwise it is linked unchanged.
    """
    if not lmap.source_maps:
        _link(case.gt_path, folder, case.case_id + _gt_suffix(case.gt_path))
        return
    from ragsam.data.prepare import convert_labels
    from ragsam.data.volume import read_labels, write_labels

    converted = convert_labels(read_labels(case.gt_path), lmap)
    write_labels(converted.array, converted.geometry, folder / f"{case.case_id}.nii.gz", force=True)


def _link(src: Path, folder: Path, name: str) -> None:
    """``folder/name`` pointing at ``src`` (a symbolic link, or a copy where links are not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / name
    try:
        dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
    except OSError:
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)


def _gt_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise InputError(path, "ground truth must be a NIfTI, NRRD or MHA file")


def _collect(data: str | os.PathLike, labels: str | os.PathLike | None, layout: str, split: str | None,
             case_ids: list[str] | None, slice_settings: Any, series_uid: str | None,
             ) -> tuple[list[BaselineCase], list[str], CacheMeta | None]:
    if is_prepared_cache(data):
        if labels is not None:
            raise InputError(data, "a prepared cache carries its own labels; --gt is for a single image")
        cases, meta = cached_cases(data, split, case_ids)
        return cases, [], meta
    if split is not None:
        raise InputError(data, f"split {split!r} needs a prepared cache (`ragsam prepare`); this is raw data")
    cases, skipped = raw_cases(data, labels, layout, case_ids, slice_settings, series_uid)
    return cases, skipped, None


def _nonempty(cases: list[BaselineCase], data: str | os.PathLike) -> list[BaselineCase]:
    if not cases:
        raise InputError(data, "no cases selected")
    return cases


def _draw_overlays(cases: list[BaselineCase], pred_dir: Path, out: Path, label_names: dict[int, str],
                   result: Any) -> None:
    from ragsam.data.volume import pair_to_reference, read_image, read_labels
    from ragsam.evaluation.overlays import draw_overlay

    by_id = {c.case_id: c for c in cases}
    for case_paths in result.cases:  # the evaluation's case ids (file-name rule) map to ours by file
        case = by_id[case_paths.pred.name[: -len(".nii.gz")]]
        image = read_image(case.image_path) if case.image_path is not None else None
        gt = read_labels(case.gt_path)
        if image is not None:
            gt = pair_to_reference(gt, image)
        pred = read_labels(pred_dir / f"{case.case_id}.nii.gz", reference=gt)
        png = draw_overlay(gt, pred, label_names, out / "overlays" / f"{case.case_id}.png", image=image,
                           title=case.case_id)
        result.overlays[case_paths.case_id] = f"overlays/{png.name}"


def prompt_organs(label_map: Any, organs: str | Sequence[int | str] | None) -> list[int]:
    """The label-map ids to prompt for an evaluation ``organs`` selection.

    A named subset scored under its own map (``btcv-table1`` merges the adrenal
    glands) is prompted with every source organ it is made of, each separately.
    """
    from ragsam.evaluation.evaluate import select_organs

    _, ids, conversion = select_organs(label_map, organs)
    if conversion is None:
        return [int(i) for i in ids]
    return sorted(int(src) for src, dst in conversion.items() if src != 0 and dst in set(ids))


def _keep_present_organs(result: Any) -> None:
    """Drop organs absent from every case's ground truth (never prompted, so n/a everywhere)."""
    present = {r.organ_id for r in result.rows if r.gt_voxels > 0}
    keep = [i for i, oid in enumerate(result.organ_ids) if oid in present]
    result.organ_ids = [result.organ_ids[i] for i in keep]
    result.organ_names = [result.organ_names[i] for i in keep]
    result.rows = [r for r in result.rows if r.organ_id in present]
    result.settings.update(organ_ids=list(result.organ_ids), organs=list(result.organ_names),
                           organs_scored="organs present in the ground truth of at least one case")
    if isinstance(result.settings.get("nsd_tolerance_mm"), dict):
        result.settings["nsd_tolerance_mm"] = {k: v for k, v in result.settings["nsd_tolerance_mm"].items()
                                               if int(k) in present}


@dataclass(frozen=True)
class BaselineConfig:
    """How :func:`run_baseline` prompts, segments and scores (everything but where from and where to).

    Attributes:
        prompt: ``point1``, ``point3`` or ``box``.
        weights: Hugging Face id or folder, Meta SAM / MedSAM ``.pth``, or ``"random"`` (tests).
        arch: ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h`` / ``tiny``; must match the weights.
        label_map: ``btcv``, ``flare22`` or a JSON file; default the cache's map, else ``btcv``.
        seed: prompt seed (and the initialisation of ``"random"`` weights), >= 0.
        box_iou: IoU of box prompts with the organ's tight box.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        labels: ground-truth file when ``data`` is a single image.
        organs: organs to prompt and score (a named subset such as ``paper-8`` or ids); default the
            organs of the label map present in the ground truth of at least one case.
        split: with a prepared cache, the ``splits.json`` list to run (e.g. ``"test"``).
        cases: restrict to these case ids.
        layout: dataset layout of raw data (``auto``, ``nnunet``, ``msd``, ``btcv``, ...).
        slice_settings: :class:`~ragsam.data.slices.SliceSettings` for raw data (HU window, slice size).
        image_size: model input side (default the architecture's 1024; ``tiny``: 128).
        normalization: ``auto``, ``sam`` or ``unit`` (MedSAM).
        nsd_tolerance_mm: NSD tolerance (mm) or ``"flare22"``.
        overlays: draw one PNG per case.
        embed_batch: slices per image-encoder call.
        series_uid: DICOM series to read when a folder holds several.
    """

    prompt: str = "box"
    weights: str = "random"
    arch: str = "sam_vit_b"
    label_map: str | os.PathLike | None = None
    seed: int = 0
    box_iou: float = 0.5
    device: str = "auto"
    labels: str | os.PathLike | None = None
    organs: str | Sequence[int | str] | None = None
    split: str | None = None
    cases: list[str] | None = None
    layout: str = "auto"
    slice_settings: Any = None
    image_size: int | None = None
    normalization: str = "auto"
    nsd_tolerance_mm: float | str = "flare22"
    overlays: bool = True
    embed_batch: int = 4
    series_uid: str | None = None


@dataclass
class _Prepared:
    """The checked inputs of one baseline run: cases, label map, organs, model and its settings."""

    todo: list[BaselineCase]
    skipped: list[str]
    meta: CacheMeta | None
    lmap: Any
    organ_ids: list[int]
    prompt_settings: PromptSettings
    normalization: str
    model: Any
    load_report: Any
    device: Any
    slice_settings: Any


def _prepare_inputs(data: str | os.PathLike, out: Path, config: BaselineConfig, force: bool) -> _Prepared:
    """Validate the settings, select the cases and load the model (before anything is written)."""
    from ragsam.data.label_maps import load_label_map
    from ragsam.data.slices import SliceSettings
    from ragsam.models.promptable_sam import load_prompt_sam
    from ragsam.utils.device import resolve_device

    prompt_settings = PromptSettings(kind=config.prompt, box_iou=config.box_iou, seed=config.seed)  # validates first
    check_writable(out, force)
    dev = resolve_device(config.device, ranks.local_gpu())  # torchrun: one GPU per local rank
    norm = resolve_normalization(str(config.weights), config.normalization)
    slice_settings = config.slice_settings or SliceSettings()
    todo, skipped, meta = _collect(data, config.labels, config.layout, config.split, config.cases, slice_settings,
                                   config.series_uid)
    todo = _nonempty(todo, data)
    label_map = config.label_map
    if label_map is None:
        label_map = Path(data) / "label_map.json" if meta is not None else "btcv"
    lmap = load_label_map(label_map)
    organ_ids = prompt_organs(lmap, config.organs)
    model, load_report = load_prompt_sam(config.arch, str(config.weights), config.image_size, seed=config.seed)
    model.to(dev)
    apply_threads(model)
    return _Prepared(todo=todo, skipped=skipped, meta=meta, lmap=lmap, organ_ids=organ_ids,
                     prompt_settings=prompt_settings, normalization=norm, model=model, load_report=load_report,
                     device=dev, slice_settings=slice_settings)


def _run_settings(data: str | os.PathLike, config: BaselineConfig, run: _Prepared) -> dict[str, Any]:
    """The settings recorded in ``baseline.json`` (cases, skips and time are added at the end)."""
    import torch
    from transformers import __version__ as transformers_version

    from ragsam import __version__ as ragsam_version

    prompt, labels, meta = config.prompt, config.labels, run.meta
    return {
        "data": str(Path(data).resolve()), "labels": None if labels is None else str(Path(labels).resolve()),
        "prepared_cache": meta is not None, "prompt": prompt,
        "box_iou": config.box_iou if prompt == "box" else None,
        "seed": config.seed, "weights": str(config.weights), "arch": config.arch,
        "image_size": run.load_report.image_size,
        "resized_position_tensors": run.load_report.resized, "normalization": run.normalization,
        "mask_choice": MULTIMASK_RULE[prompt], "threshold": "logit > 0 (probability 0.5)",
        "overlaps": "highest logit wins", "label_map": run.lmap.name, "organ_ids": run.organ_ids,
        "split": config.split,
        "slices": meta.settings if meta is not None else run.slice_settings.to_json(), "device": str(run.device),
        "versions": {"ragsam": ragsam_version, "torch": torch.__version__, "transformers": transformers_version},
    }


def _segment_cases(run: _Prepared, config: BaselineConfig, pred_dir: Path, gt_dir: Path,
                   progress: Callable[[str, int, int], None] | None,
                   cases: list[BaselineCase]) -> list[tuple[str, dict[str, Any]]]:
    """Segment ``cases`` (this rank's share of ``run.todo``) into ``pred_dir`` and place their
    scoring ground truth in ``gt_dir``.

    Returns:
        ``(case id, {"prompts", "slices", "seconds", "ground_truth"})`` per case (for ``baseline.json``).
    """
    from ragsam.data.slices import slices_to_volume
    from ragsam.data.volume import write_labels

    per_case: dict[str, dict[str, Any]] = {}
    for index, case in enumerate(cases):
        if progress is not None:
            progress(case.case_id, index, len(cases))
        t0 = time.perf_counter()
        stack = case.load()
        pred, n_prompts = segment_slices(run.model, stack.images, stack.labels, run.organ_ids, run.prompt_settings,
                                         case.case_id, run.normalization, config.embed_batch)
        volume = slices_to_volume(pred, stack.grid)
        write_labels(volume, stack.grid.geometry, pred_dir / f"{case.case_id}.nii.gz")
        _scoring_ground_truth(case, run.lmap, gt_dir)
        per_case[case.case_id] = {"prompts": n_prompts, "slices": int(stack.images.shape[0]),
                                  "seconds": round(time.perf_counter() - t0, 3),
                                  "ground_truth": str(case.gt_path)}
    return list(per_case.items())


def _score(run: _Prepared, config: BaselineConfig, pred_dir: Path, gt_dir: Path, out: Path) -> Any:
    """Evaluate the predictions (under torchrun each rank scores its share; every rank gets
    every row), naming the published predictions and the original ground truth."""
    from ragsam.evaluation.evaluate import EvaluationOptions, evaluate

    result = evaluate(pred_dir, gt_dir, EvaluationOptions(label_map=run.lmap, organs=config.organs,
                      nsd_tolerance_mm=config.nsd_tolerance_mm))
    if config.organs is None:
        _keep_present_organs(result)
    by_id = {c.case_id: c for c in run.todo}  # not the temporary folders the files were scored in
    result.cases = [dataclasses.replace(c, pred=out / "predictions" / c.pred.name,
                                        gt=by_id[c.pred.name[: -len(".nii.gz")]].gt_path) for c in result.cases]
    gt_files = [str(c.gt_path) for c in run.todo]
    result.settings.update(pred=str(out / "predictions"),
                           gt=gt_files[0] if len(gt_files) == 1 else os.path.commonpath(gt_files))
    return result


def _write_report(run: _Prepared, config: BaselineConfig, result: Any, pred_dir: Path, tmp: Path) -> None:
    """Draw the overlays and write the report into ``tmp`` (rank 0)."""
    from ragsam.evaluation.report import write_report

    if config.overlays:
        _draw_overlays(run.todo, pred_dir, tmp, run.lmap.labels, result)
    write_report(result, tmp)


@ranks.fail_together  # torchrun: a rank's failure, wherever it happens, fails every rank
def run_baseline(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: BaselineConfig | None = None,
    *,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> BaselineSummary:
    """Segment every case with prompted SAM / MedSAM and evaluate against the ground truth.

    Stages: :func:`_prepare_inputs` (checks, cases, model), :func:`_segment_cases`,
    :func:`_score` (evaluation, overlays, report), then ``baseline.json``; all written
    inside one atomic folder.

    Args:
        data: raw dataset folder, image file or DICOM folder (with ``config.labels``), or a prepared cache.
        out_dir: output folder (layout in the module docstring); refused if it exists unless ``force``.
        config: :class:`BaselineConfig` (default: all defaults, i.e. box prompts on random weights).
        force: replace an existing ``out_dir``.
        progress: called as ``progress(case_id, index, total)`` before each case.
    Returns:
        :class:`BaselineSummary`.
    Raises:
        InputError: bad prompt kind / IoU / seed / device / weights / data; OutputExistsError.
    """
    config = config or BaselineConfig()
    start = time.perf_counter()
    out = Path(out_dir)
    run = _prepare_inputs(data, out, config, force)
    run_settings = _run_settings(data, config, run)
    here = ranks.current()
    # torchrun: rank 0 creates the temporary output folder and shares its path; every rank
    # writes its cases' predictions into it and scores its share; rank 0 writes the shared files.
    with atomic_dir(out, force=force) if here.is_main else contextlib.nullcontext(None) as own_tmp:
        tmp = Path(ranks.gather_objects(str(own_tmp) if here.is_main else "")[0])
        pred_dir, gt_dir = tmp / "predictions", tmp / ".scoring-gt"  # the latter removed before publishing
        per_case = dict(ranks.gather_results(
            lambda mine: _segment_cases(run, config, pred_dir, gt_dir, progress, mine), run.todo))
        result = _score(run, config, pred_dir, gt_dir, out)
        run_settings["cases"] = per_case
        run_settings["skipped_unlabelled"] = run.skipped

        def shared_files() -> None:
            shutil.rmtree(gt_dir)
            _write_report(run, config, result, pred_dir, tmp)
            run_settings["seconds"] = round(time.perf_counter() - start, 3)
            write_json(tmp / "baseline.json", run_settings)

        ranks.on_main(shared_files)
    ranks.barrier()  # rank 0 has published the folder
    result.out_dir = out
    todo = run.todo
    return BaselineSummary(out_dir=out, cases=[c.case_id for c in todo],
                           predictions=[out / "predictions" / f"{c.case_id}.nii.gz" for c in todo],
                           evaluation=result, prompts={k: v["prompts"] for k, v in per_case.items()},
                           skipped_unlabelled=run.skipped, settings=run_settings,
                           seconds=time.perf_counter() - start)
