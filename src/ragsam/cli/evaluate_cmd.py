"""``ragsam evaluate``: Dice / HD95 / NSD of predicted label volumes against ground truth."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.root import app


@app.command("evaluate")
def evaluate_cmd(
    pred: Path = typer.Option(..., "--pred", "-p", help="Predicted label file, or a folder of them."),
    gt: Path = typer.Option(..., "--gt", "-g", help="Ground-truth label file, or a folder (matched by case id)."),
    labels: str = typer.Option("btcv", "--labels", help="Label map: btcv, flare22 or a label-map JSON file."),
    organs: str | None = typer.Option(
        None, "--organs", help="Organs to score: a named subset (paper-8, btcv-table1) or ids/names, e.g. 1,2,6."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write metrics.csv, metrics.json, report.md and overlays/ into this folder."),
    nsd_tolerance: str = typer.Option(
        "flare22", "--nsd-tolerance", help="NSD tolerance in mm, or 'flare22' (FLARE22's per-organ values)."),
    absent: str = typer.Option(
        "strict", "--absent", help="Organs missing from GT/prediction: strict (n/a, 0, worst HD95) or samed."),
    hd95_voxels: bool = typer.Option(
        False, "--hd95-voxels", help="HD95 in voxels, ignoring spacing (SAMed's numbers; use with --absent samed)."),
    images: Path | None = typer.Option(
        None, "--images", help="CT image (file / DICOM folder) or folder of images to draw under the overlays."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Draw one PNG per case (with --out)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
    jobs: int | None = typer.Option(
        None, "--jobs", "-j", help="Worker processes, one case each (default: the cores available)."),
) -> None:
    """Score predictions against ground truth (per case x organ) and print the paper-layout table.

    Predictions are paired with the ground truth by case id (from file names, dropping the extension, a trailing _0000 and words like img/label/pred/gt) and by physical geometry.

    Example: ragsam evaluate --pred runs/lora/preds --gt data/BTCV/label --organs paper-8 -o runs/lora/eval
    """
    from rich.console import Console

    from ragsam.evaluation.evaluate import EvaluationOptions, evaluate
    from ragsam.evaluation.report import print_table
    from ragsam.utils import ranks

    organ_list: str | list[str] | None = organs
    if organs is not None and ("," in organs or organs.strip().isdigit()):
        organ_list = [o.strip() for o in organs.split(",") if o.strip()]
    result = evaluate(pred, gt, EvaluationOptions(label_map=labels, nsd_tolerance_mm=nsd_tolerance,
                      absent=absent, organs=organ_list, overlays=overlays,
                      hd95_units="voxels" if hd95_voxels else "mm", jobs=jobs), out_dir=out, force=force,
                      images=images)  # type: ignore[arg-type]
    if not ranks.current().is_main:  # torchrun: rank 0 reports
        return
    console = Console()
    print_table(result, console)
    if result.out_dir is not None:
        console.print(f"wrote {result.out_dir}/metrics.csv, metrics.json, report.md"
                      + (f" and {len(result.overlays)} overlay(s)" if result.overlays else ""))
