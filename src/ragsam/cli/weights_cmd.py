"""``ragsam weights convert``: official Meta SAM / MedSAM ``.pth`` -> Hugging Face SAM folder."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.app import weights_app


@weights_app.command("convert")
def convert_command(
    source: Path = typer.Argument(..., help="Meta SAM or MedSAM checkpoint (.pth state dict)."),
    out_dir: Path = typer.Argument(..., help="Output folder (config.json + model.safetensors)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT_DIR if it exists."),
) -> None:
    """Convert an official SAM / MedSAM checkpoint to a Hugging Face SAM folder.

    The architecture (ViT-B/L/H) is recognised from the tensor shapes; every key
    is mapped explicitly and loaded strictly. The pickle is opened with
    torch.load(weights_only=True): files holding code are refused.

    Example: ragsam weights convert sam_vit_b_01ec64.pth models/sam-vit-b
    """
    from ragsam.models.export import convert_checkpoint

    path = convert_checkpoint(source, out_dir, force=force)
    typer.echo(f"converted {source} -> {path}")
