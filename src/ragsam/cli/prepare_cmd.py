"""``ragsam prepare`` (dataset -> slice cache) and ``ragsam phantom`` (synthetic dataset)."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.options import parse_numbers, parse_window
from ragsam.cli.root import app


@app.command("prepare")
def prepare_command(
    source: Path = typer.Argument(..., help="Dataset folder (nnU-Net, MSD, BTCV, FLARE22, pairs), image file or DICOM folder."),
    out: Path = typer.Option(..., "-o", "--out", help="Cache folder to create or update."),
    layout: str = typer.Option("auto", "--layout", help="auto, nnunet, msd, btcv, flare22 or pairs."),
    labels: str = typer.Option("btcv", "--labels", help="Label map: btcv, flare22, btcv-table1, paper-8 or a JSON file."),
    size: int = typer.Option(512, "--size", help="Slice size S (slices are resized to S x S pixels)."),
    window: str = typer.Option("-125,275", "--window", help="HU window LOW,HIGH scaled to [0, 1] (write --window=-125,275)."),
    context: int = typer.Option(0, "--context", help="Default 2.5D context for readers (neighbour slices each side)."),
    split: str = typer.Option("auto", "--split", help="auto, btcv (community 24/6: test 0035-0040), btcv-even, flare22 (30/20), kfold:K or none."),
    seed: int = typer.Option(0, "--seed", help="Seed of the k-fold shuffle."),
    series: str | None = typer.Option(None, "--series", help="DICOM SeriesInstanceUID when a folder holds several."),
    force: bool = typer.Option(False, "--force", help="Rebuild every case; allow a non-empty folder that is not a cache."),
    jobs: int | None = typer.Option(
        None, "--jobs", "-j", help="Worker processes, one case each (default: the cores available)."),
) -> None:
    """Turn CT volumes and labels into a cache of canonical axial slices for training and retrieval.

    Volumes are reoriented to LPS, windowed and resized; re-running updates the cache
    incrementally (only changed cases are rebuilt, removed ones deleted).

    Example: ragsam prepare data/BTCV/RawData/Training -o prepared/btcv --labels btcv --split btcv
    """
    from rich.console import Console
    from rich.table import Table

    from ragsam.data.cache_meta import CacheMeta
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings

    low, high = parse_window(window)
    settings = SliceSettings(window=(low, high), size=size, context=context)
    console = Console()

    def progress(case_id: str, done: int, total: int) -> None:
        console.print(f"  built {case_id} ({done}/{total})", highlight=False)

    summary = prepare_dataset(source, out, PrepareOptions(settings=settings, layout=layout, label_map=labels,
                              split=split, seed=seed, series_uid=series, jobs=jobs), force=force,
                              progress=progress)
    names = CacheMeta.read(summary.out_dir).label_names
    console.print(f"[bold]{summary.out_dir}[/bold]: {len(summary.cases)} cases, {summary.slices} slices "
                  f"(built {len(summary.built)}, reused {len(summary.reused)}, removed {len(summary.removed)}) "
                  f"in {summary.seconds:.1f} s", soft_wrap=True)
    if summary.skipped_unlabelled:
        console.print(f"skipped {len(summary.skipped_unlabelled)} unlabelled cases: "
                      f"{', '.join(summary.skipped_unlabelled[:5])}{' ...' if len(summary.skipped_unlabelled) > 5 else ''}", soft_wrap=True)
    splits = ", ".join(f"{k} {len(v)}" for k, v in summary.splits.items() if k != "folds")
    folds = summary.splits.get("folds")
    console.print(f"splits: {splits}" + (f", {len(folds)} folds" if folds else ""))
    table = Table(title="organs found", show_lines=False)
    table.add_column("id", justify="right")
    table.add_column("organ")
    table.add_column("slices", justify="right")
    for organ, count in summary.organ_slices.items():
        table.add_row(str(organ), names.get(organ, "?"), str(count))
    console.print(table)


@app.command("phantom")
def phantom_command(
    out: Path = typer.Argument(..., help="Folder to create with the synthetic dataset."),
    cases: int = typer.Option(4, "--cases", help="Number of cases (each with its own seeded anatomy)."),
    shape: str = typer.Option("32,96,96", "--shape", help="Volume size Z,Y,X in voxels."),
    spacing: str = typer.Option("5,4,4", "--spacing", help="Voxel spacing Z,Y,X in mm."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed."),
    layout: str = typer.Option("btcv", "--layout", help="btcv (img/ + label/) or nnunet (imagesTr/ + labelsTr/)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
) -> None:
    """Write a synthetic abdominal CT dataset (BTCV organ ids) for demos and smoke tests.

    Example: ragsam phantom demo/phantoms --cases 6 --shape 48,128,128
    """
    from ragsam.data.phantom import write_phantom_dataset

    zyx = parse_numbers(shape, 3, "--shape", int)
    mm = parse_numbers(spacing, 3, "--spacing")
    path = write_phantom_dataset(out, n_cases=cases, layout=layout, seed=seed, shape=zyx, spacing_mm=mm, force=force)
    typer.echo(f"wrote {cases} phantom cases ({layout} layout, {'x'.join(map(str, zyx))} voxels) to {path}")
