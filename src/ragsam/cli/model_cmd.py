"""``ragsam info`` (parameter counts of a model + PEFT setting) and ``ragsam merge`` (LoRA -> SAM folder)."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.root import app


@app.command("info")
def info_command(
    arch: str = typer.Option("sam_vit_b", "--arch", help="sam_vit_b | sam_vit_l | sam_vit_h | tiny."),
    peft: str = typer.Option("lora", "--peft", help="lora | adapter | none (full fine-tuning)."),
    rank: int = typer.Option(4, "--rank", help="Encoder LoRA rank."),
    targets: str = typer.Option("q,v", "--targets", help="Encoder LoRA targets (q,k,v,proj,mlp)."),
    decoder: str = typer.Option("full", "--decoder", help="Mask decoder: full | lora | frozen."),
    decoder_rank: int = typer.Option(4, "--decoder-rank", help="Decoder LoRA rank."),
    num_classes: int = typer.Option(13, "--num-classes", help="Number of organs K."),
    image_size: int = typer.Option(512, "--image-size", help="Input size in pixels."),
    config: Path | None = typer.Option(None, "--config", "-c",
                                       help="YAML with a 'model:' section (e.g. a run's config.yaml); "
                                            "replaces the options above."),
) -> None:
    """Print trainable / total parameters per component (image encoder, prompt encoder, mask decoder, PEFT).

    Nothing is downloaded or allocated: the model is built on the meta device.

    Example: ragsam info --arch sam_vit_b --peft lora --rank 4 --decoder lora
    """
    import torch
    from rich.console import Console
    from rich.table import Table

    from ragsam.models import ModelConfig, PeftConfig, build_model, count_parameters
    from ragsam.peft.apply import describe

    if config is not None:
        from ragsam.models.export import read_model_config

        cfg = read_model_config(config)
    else:
        cfg = ModelConfig(arch=arch, num_classes=num_classes, image_size=image_size,
                          peft=PeftConfig(method=peft, rank=rank, decoder=decoder, decoder_rank=decoder_rank,
                                          targets=[t.strip() for t in targets.split(",") if t.strip()]))
    cfg.weights = "random"  # counts do not depend on the weights
    with torch.device("meta"):
        model = build_model(cfg)
    counts = count_parameters(model)
    table = Table(title=f"{cfg.arch} at {cfg.image_size} px, K={cfg.num_classes}: {describe(cfg.peft)}")
    for column in ("component", "trainable", "total", "trainable %"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for name, (trainable, total) in counts.items():
        share = f"{100.0 * trainable / total:.2f}" if total else "-"
        table.add_row(name, f"{trainable:,}", f"{total:,}", share)
    Console(width=100).print(table)


@app.command("merge")
def merge_command(
    run_dir: Path = typer.Argument(..., help="Training run folder (config.yaml + model.safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output Hugging Face SAM folder."),
    checkpoint: str = typer.Option("model.safetensors", "--checkpoint",
                                   help="Trained tensors inside the run (model.safetensors or last.safetensors)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Fold a LoRA run into SAM's weights and write a Hugging Face folder (config.json + model.safetensors).

    Example: ragsam merge runs/samed -o models/samed-btcv-merged
    """
    from ragsam.models.export import merge_run

    path = merge_run(run_dir, out, checkpoint=checkpoint, force=force)
    typer.echo(f"merged model written to {path}")
