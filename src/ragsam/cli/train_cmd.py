"""``ragsam train``: fine-tune SAM on a prepared slice cache (single process or torchrun DDP)."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.root import app


@app.command(
    "train",
    context_settings={"allow_extra_args": False},
    help=(
        "Fine-tune SAM (SAMed LoRA, Med-SA adapters or full) on a prepared slice cache.\n\n"
        "OVERRIDES are key=value pairs applied on top of the config, e.g. optim.lr=0.001 "
        "model.peft.rank=8 data.val=test. Multi-GPU: launch with torchrun "
        "(torchrun --nproc_per_node 2 -m ragsam.cli.main train ...); only rank 0 writes files.\n\n"
        "Example: ragsam train --config samed --prepared prepared/btcv --out runs/samed "
        "model.weights=facebook/sam-vit-base"
    ),
)
def train_command(
    overrides: list[str] = typer.Argument(None, help="key=value configuration overrides."),
    config: str | None = typer.Option(None, "--config", "-c",
                                      help="YAML file or preset name (samed, samed_s, medsa, full, tiny)."),
    prepared: Path | None = typer.Option(None, "--prepared", "-p", help="Prepared slice cache (data.prepared)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to create (or resume)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Start afresh even if --out holds a previous run."),
) -> None:
    """Parse, load the configuration, call :func:`ragsam.training.train`, print a summary."""
    from ragsam.training import train
    from ragsam.training.distributed import env_world
    from ragsam.training.run import requested_config

    items = list(overrides or [])
    if prepared is not None:
        items.append(f"data.prepared={prepared}")
    cfg = requested_config(config, items, out, resume)
    if cfg is not None and cfg.optim.bf16_cpu:
        from ragsam.utils.device import resolve_device
        from ragsam.utils.precision import cpu_bf16_note

        note = cpu_bf16_note(resolve_device(cfg.device), cfg.optim.bf16, cpu=True)
        if note:
            typer.echo(f"ragsam: note: {note}", err=True)
    run_dir = train(cfg, out, resume=resume, force=force)
    rank, _, _ = env_world()
    if rank == 0:
        from ragsam.training.run_info import RunInfo

        run = RunInfo.read(run_dir)
        text = (f" (best validation Dice {run.best_dice:.4f} at iteration {run.best_iteration})"
                if run.validated else "")
        typer.echo(f"run finished: {run_dir}{text}")
