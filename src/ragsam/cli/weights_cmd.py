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
    """Check a local weights folder or official file against a preset.

    An official file: the published checksum where Meta publishes one (SAM), then every
    tensor name and shape of the preset's architecture. A folder: its
    config facts and a strict load. Anything else: one line naming the file, exit 2.

    Example: ragsam weights verify ~/weights/dinov2_vits14_reg4_pretrain.pth dinov2-small-reg
    """
    from ragsam.hub.verify import verify_weights

    for line in verify_weights(path, name):
        typer.echo(f"ok  {line}")
    typer.echo(f"{path}: matches {name}")


@weights_app.command("convert")
def convert_command(
    source: Path = typer.Argument(..., help="Meta checkpoint: SAM / MedSAM .pth, SAM 2 / 2.1 .pt, DINOv2 .pth."),
    out_dir: Path = typer.Argument(..., help="Output folder (config.json + model.safetensors)."),
    variant: str | None = typer.Option(None, "--variant",
                                       help="Preset the file must be (e.g. sam2.1-tiny, dinov2-small-reg); "
                                            "checked before anything is written."),
    force: bool = typer.Option(False, "--force", help="Replace OUT_DIR if it exists."),
) -> None:
    """Convert an official SAM, SAM 2 or DINOv2 checkpoint to a Hugging Face folder.

    The family and size are recognised from the tensor names and shapes; every key
    is mapped explicitly and loaded strictly. A DINOv2 folder records Meta's
    position-embedding interpolation, so ragsam embeds with it exactly as with the
    .pth. The pickle is opened with torch.load(weights_only=True): files holding
    code are refused.

    Example: ragsam weights convert dinov2_vits14_pretrain.pth models/dinov2-small --variant dinov2-small
    """
    from ragsam.hub.convert import convert_weights

    path, family = convert_weights(source, out_dir, variant=variant, force=force)
    typer.echo(f"converted {source} ({family}) -> {path}")
