"""``ragsam pretrain-tiny``: pre-train the demo's tiny SAM, SAM 2 and slice embedder on synthetic phantoms."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.root import app


@app.command(
    "pretrain-tiny",
    help=(
        "Pre-train the tiny foundation models the demo ships with (tiny SAM, tiny SAM 2, tiny "
        "DINOv2-architecture slice embedder) on a synthetic phantom corpus that shares no case with "
        "the demo, with a fixed seed. --preset shipped reproduces src/ragsam/resources/tiny_models "
        "(about 3 min of CPU time, 1 thread); --preset micro runs every stage in seconds.\n\n"
        "Example: ragsam pretrain-tiny --out tiny_models --force"
    ),
)
def pretrain_tiny_command(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (sam/, sam2/, embedder/, manifest.json)."),
    preset: str = typer.Option("shipped", "--preset", help="shipped (the packaged weights) or micro (seconds)."),
    seed: int | None = typer.Option(None, "--seed", help="Override the preset's training seed."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads. The shipped weights were made with 1 "
                                                    "(float sums depend on the thread count)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
) -> None:
    """Parse, call :func:`ragsam.pretrain.run.pretrain_tiny`, print where the models are."""
    import torch

    from ragsam.pretrain import get_settings
    from ragsam.pretrain.run import pretrain_tiny

    torch.set_num_threads(max(1, threads))
    settings = get_settings(preset, **({} if seed is None else {"seed": seed}))
    manifest = pretrain_tiny(out, settings, force=force,
                             on_stage=lambda stage: typer.echo(f"  {stage}", err=True))
    cpu = sum(manifest["cpu_seconds"].values())
    typer.echo(f"tiny models written to {out} ({cpu:.0f} s CPU, {manifest['wall_seconds']:.0f} s wall)")
