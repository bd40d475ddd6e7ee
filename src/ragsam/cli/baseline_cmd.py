"""``ragsam baseline``: prompted SAM / MedSAM (the paper's Table 1 rows) on a dataset, then scored."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from ragsam.cli.options import parse_window
from ragsam.cli.root import app


@app.command("baseline")
def baseline_command(
    data: Path = typer.Argument(..., help="Dataset folder (any layout), prepared cache, or one image (with --gt)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: predictions/, metrics.csv, report.md, ..."),
    prompt: str = typer.Option(..., "--prompt", help="point1 (1 positive point), point3 (3 points) or box."),
    weights: str = typer.Option(..., "--weights", help="Hugging Face id or folder, SAM/MedSAM .pth, or random."),
    arch: str = typer.Option("sam_vit_b", "--arch", help="sam_vit_b, sam_vit_l, sam_vit_h or tiny (must match)."),
    box_iou: float = typer.Option(0.5, "--box-iou", help="IoU of the box prompt with the organ's tight box."),
    labels: str | None = typer.Option(None, "--labels", help="Label map: btcv, flare22 or a JSON file "
                                                               "(default: the cache's, else btcv)."),
    organs: str | None = typer.Option(None, "--organs", help="Organs to prompt and score: paper-8, btcv-table1 "
                                                               "or ids, e.g. 1,2,6 (default: all)."),
    gt: Path | None = typer.Option(None, "--gt", help="Ground-truth labels when DATA is a single image."),
    split: str | None = typer.Option(None, "--split", help="With a prepared cache: the split to run, e.g. test."),
    cases: str | None = typer.Option(None, "--cases", help="Comma-separated case ids to run (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Prompt seed (and init of random weights)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    size: int = typer.Option(512, "--size", help="Slice size for raw data (a cache keeps its own)."),
    window: str = typer.Option("-125,275", "--window", help="HU window LOW,HIGH for raw data (--window=-125,275)."),
    image_size: int | None = typer.Option(None, "--image-size", help="Model input size (default 1024; tiny 128)."),
    normalize: str = typer.Option("auto", "--normalize", help="Pixel normalisation: auto, sam or unit (MedSAM)."),
    layout: str = typer.Option("auto", "--layout", help="Raw dataset layout: auto, nnunet, msd, btcv, flare22, pairs."),
    nsd_tolerance: str = typer.Option("flare22", "--nsd-tolerance", help="NSD tolerance in mm, or flare22."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Draw one PNG per case."),
    series: str | None = typer.Option(None, "--series", help="DICOM SeriesInstanceUID when a folder holds several."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
) -> None:
    """Segment with a prompted SAM or MedSAM (prompts simulated from the ground truth) and score it.

    For every slice and organ in the ground truth, one point, three points or a box whose IoU
    with the organ's tight box is --box-iou is given to SAM. MedSAM: same command with its
    weights (flaviagiammarino/medsam-vit-base or medsam_vit_b.pth); it was trained on boxes.

    Example: ragsam baseline prepared/btcv --split test -o runs/medsam-box --prompt box --weights flaviagiammarino/medsam-vit-base
    """
    from rich.console import Console

    from ragsam.baselines.run import BaselineConfig, run_baseline
    from ragsam.data.slices import SliceSettings
    from ragsam.evaluation.report import print_table

    organ_list: str | list[str] | None = organs
    if organs is not None and ("," in organs or organs.strip().isdigit()):
        organ_list = [o.strip() for o in organs.split(",") if o.strip()]
    case_list = [c.strip() for c in cases.split(",") if c.strip()] if cases else None
    tolerance: float | str = nsd_tolerance
    with contextlib.suppress(ValueError):
        tolerance = float(nsd_tolerance)
    console = Console(stderr=False)

    def progress(case_id: str, index: int, total: int) -> None:
        console.print(f"  [{index + 1}/{total}] {case_id}", highlight=False)

    config = BaselineConfig(
        prompt=prompt, weights=weights, arch=arch, label_map=labels, seed=seed, box_iou=box_iou, device=device,
        labels=gt, organs=organ_list, split=split, cases=case_list, layout=layout,
        slice_settings=SliceSettings(window=parse_window(window), size=size), image_size=image_size,
        normalization=normalize, nsd_tolerance_mm=tolerance, overlays=overlays, series_uid=series)
    summary = run_baseline(data, out, config, force=force, progress=progress)
    from ragsam.utils import ranks

    if not ranks.current().is_main:  # torchrun: every rank holds the summary; rank 0 prints
        return
    print_table(summary.evaluation, console)
    n_prompts = sum(summary.prompts.values())
    console.print(f"{len(summary.cases)} case(s), {n_prompts} prompts ({prompt}), {summary.seconds:.1f} s -> "
                  f"{summary.out_dir}/predictions, metrics.csv, report.md", soft_wrap=True, highlight=False)
    if summary.skipped_unlabelled:
        console.print(f"skipped {len(summary.skipped_unlabelled)} unlabelled case(s): "
                      f"{', '.join(summary.skipped_unlabelled[:5])}", soft_wrap=True, highlight=False)
