"""``ragsam weights list|pull|verify|convert``: named presets of public weights, official checkpoint conversion."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.root import weights_app


@weights_app.command("list")
def list_cmd() -> None:
    """List the weight presets, their Hugging Face ids and official files.

    Example: ragsam weights list
    """
    from rich.console import Console
    from rich.table import Table

    from ragsam.models.presets import PRESETS

    table = Table(title="Weight presets (use the name or the Hugging Face id with --weights)")
    for column in ("name", "family", "Hugging Face id", "official file", "description"):
        table.add_column(column)
    for preset in PRESETS.values():
        official = preset.official_url.rsplit("/", 1)[-1] if preset.official_url else "-"
        table.add_row(preset.name, preset.family, preset.hf_repo or "-", official, preset.description)
    Console().print(table)


@weights_app.command("pull")
def pull_cmd(
    name: str = typer.Argument(..., help="Preset name (see `ragsam weights list`)."),
    cache_dir: Path | None = typer.Option(None, help="Hugging Face cache folder (default: HF_HOME)."),
) -> None:
    """Download a preset into the Hugging Face cache.

    Without network it says in one line what to download and where to put it.

    Example: ragsam weights pull sam-vit-b
    """
    from ragsam.hub.fetch import pull_weights

    folder = pull_weights(name, None if cache_dir is None else str(cache_dir))
    typer.echo(f"{name}: {folder}")


@weights_app.command("verify")
def verify_cmd(
    path: Path = typer.Argument(..., help="A Hugging Face folder or an official .pth/.pt file."),
    name: str = typer.Argument(..., help="The preset it should be (see `ragsam weights list`)."),
) -> None:
    """Check a local weights folder or file against a preset.

    Example: ragsam weights verify ~/weights/sam_vit_b_01ec64.pth sam-vit-b
    """
    from ragsam.hub.fetch import verify_weights

    for line in verify_weights(path, name):
        typer.echo(f"ok  {line}")
    typer.echo(f"{path}: matches {name}")


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
