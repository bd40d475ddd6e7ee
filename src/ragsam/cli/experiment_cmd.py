"""``ragsam experiment NAME|PLAN.yaml``: the paper's comparisons, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.root import app


@app.command("experiment")
def experiment_cmd(
    plan: str = typer.Argument(..., help="paper-btcv | paper-flare-decoder | paper-flare-rank | paper-flare-rag, "
                                         "or a plan YAML file."),
    data: Path | None = typer.Option(None, "--data", help="Dataset folder (BTCV/FLARE22/nnU-Net/...). With --tiny, default: a small phantom dataset written into OUT/data."),
    out: Path = typer.Option(Path("experiments"), "--out", "-o", help="Work folder (resumable)."),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny models, short training: the protocol on a CPU (fine-tuning: each preset's recipe on ragsam's shipped tiny SAM, 300 steps; retrieval: the shipped tiny SAM 2 and embedder; all pre-trained on phantoms; baselines: a random tiny SAM)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and what is finished, run nothing."),
    sam: str = typer.Option("facebook/sam-vit-base", help="SAM ViT-B weights (fine-tuning and SAM baselines)."),
    sam_h: str = typer.Option("facebook/sam-vit-huge", "--sam-h", help="SAM ViT-H weights (the medsa preset)."),
    medsam: str = typer.Option("flaviagiammarino/medsam-vit-base", help="MedSAM weights (baselines)."),
    sam2: str = typer.Option("facebook/sam2.1-hiera-tiny", help="SAM 2 weights (rag variants)."),
    embedder: str = typer.Option("facebook/dinov2-small", help="DINOv2 weights (support bank)."),
    size: int | None = typer.Option(None, help="Slice size (default 512; 64 with --tiny)."),
    iterations: int | None = typer.Option(None, help="Override the training length (iterations)."),
    k: int = typer.Option(4, help="Supports retrieved per slice (rag variants)."),
    z_prior: float = typer.Option(0.0, "--z-prior", help="Relative-z retrieval prior weight (0: DINOv2 + Faiss "
                                                          "only, as the paper; ragsam segment uses 0.5)."),
    hybrid_weight: float = typer.Option(0.5, "--hybrid-weight", help="Weight of retrieval when a rag variant is "
                                                                     "fused with its fine-tuned base."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = typer.Option(0, help="Seed for prompts and training."),
    force: bool = typer.Option(False, "--force", help="Start the plan again in an existing folder."),
) -> None:
    """Run a paper experiment plan: each variant is trained or run, scored, and tabled beside the paper's values.

    Finished variants are skipped and an interrupted training resumes. Tables: table.md, table.csv; figures/.

    Example: ragsam experiment paper-flare-rank --data data/FLARE22 -o experiments/rank
    """
    from rich.console import Console

    from ragsam.errors import InputError
    from ragsam.experiments.runner import ExperimentSettings, run_experiment

    console = Console()
    if data is None and not dry_run and not tiny:
        raise InputError(None, "--data is required (with --tiny it defaults to a phantom dataset)")
    settings = ExperimentSettings(data=str(data or ""), tiny=tiny, sam_weights=sam, medsam_weights=medsam,
                                  sam2_weights=sam2, embedder=embedder, sam_h_weights=sam_h, size=size,
                                  iterations=iterations, k=k, z_prior=z_prior, hybrid_weight=hybrid_weight,
                                  device=device, seed=seed)
    result = run_experiment(plan, settings, out, dry_run=dry_run, force=force, log=console.print)
    if dry_run:
        for line in result:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    console.print((out / "table.md").read_text())
    console.print(f"tables: {out / 'table.md'}, {out / 'table.csv'}; figures: {out / 'figures'}")
