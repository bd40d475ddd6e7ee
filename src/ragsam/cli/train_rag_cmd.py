"""``ragsam train-rag``: fine-tune SAM 2's retrieval path on episodes from a support bank."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.root import app


@app.command(
    "train-rag",
    context_settings={"allow_extra_args": False},
    help=(
        "Fine-tune SAM 2 for retrieval-conditioned, prompt-free multi-organ segmentation: each episode is "
        "a training slice, its k supports retrieved from the bank (never from its own case, the same "
        "retrieval as `ragsam segment`) and its organ masks as target. LoRA on the image encoder and "
        "memory attention plus the mask decoder (preset rag_lora), or everything (rag_full). The run "
        "folder holds only the trained tensors; use it with `ragsam segment --sam2-run RUN`.\n\n"
        "OVERRIDES are key=value pairs, e.g. data.k=4 model.peft.rank=8 data.val=test. Multi-GPU: "
        "torchrun --nproc_per_node 2 -m ragsam.cli.main train-rag ...\n\n"
        "Example: ragsam train-rag --config rag_lora --bank banks/btcv --out runs/rag "
        "model.weights=facebook/sam2.1-hiera-tiny data.val=test"
    ),
)
def train_rag_command(
    overrides: list[str] = typer.Argument(None, help="key=value configuration overrides."),
    config: str | None = typer.Option(None, "--config", "-c",
                                      help="YAML file or preset name (rag_lora, rag_full, rag_tiny)."),
    bank: Path | None = typer.Option(None, "--bank", help="Support bank (data.bank); its cache gives the slices."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to create (or resume)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Start afresh even if --out holds a previous run."),
) -> None:
    """Parse, load the configuration, call :func:`ragsam.training.rag_run.train_rag`, print a summary."""
    from ragsam.training.distributed import env_world
    from ragsam.training.rag_config import RagTrainConfig, load_rag_config
    from ragsam.training.rag_run import train_rag
    from ragsam.training.run import requested_config
    from ragsam.training.run_info import RunInfo

    items = list(overrides or [])
    if bank is not None:
        items.append(f"data.bank={bank}")
    cfg = requested_config(config, items, out, resume, load=load_rag_config)
    run_dir = train_rag(cfg, out, resume=resume, force=force)
    if env_world()[0] == 0:
        run = RunInfo.read(run_dir, RagTrainConfig)
        text = (f" (best validation Dice {run.best_dice:.4f} at iteration {run.best_iteration})"
                if run.validated else "")
        typer.echo(f"run finished: {run_dir}{text}")
