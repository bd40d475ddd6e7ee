"""``ragsam index add|list|remove``: grow a support bank without rebuilding it."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.app import index_app


@index_app.command("add")
def add_cmd(
    bank: Path = typer.Argument(..., help="Support bank folder (from `ragsam index build`)."),
    image: Path = typer.Argument(..., help="CT image (NIfTI/NRRD/MHA file or DICOM folder), in HU."),
    labels: Path = typer.Argument(..., help="Its label map, on the same grid."),
    slices: str | None = typer.Option(None, help="Canonical z indices to add (inferior first), e.g. 12,15-18; "
                                      "default: every slice holding an organ."),
    by: str | None = typer.Option(None, help="Name recorded as the author (default: login name)."),
) -> None:
    """Append labelled slices to a bank: embedded, indexed and recorded in bank.json, atomically.

    Example: ragsam index add banks/btcv scans/ct7.nii.gz fixes/ct7_labels.nii.gz --slices 40-44
    """
    from ragsam.retrieval.bank_edit import add_volume, addition_summary, parse_slices

    addition = add_volume(bank, image, labels, slices=None if slices is None else parse_slices(slices), added_by=by)
    typer.echo(f"{bank}: added {addition_summary(addition)}")


@index_app.command("list")
def list_cmd(bank: Path = typer.Argument(..., help="Support bank folder.")) -> None:
    """List the slices added to a bank since it was built (one line each).

    Example: ragsam index list banks/btcv
    """
    from ragsam.retrieval.bank_edit import addition_summary, list_additions

    additions = list_additions(bank)
    for addition in additions:
        typer.echo(addition_summary(addition))
    if not additions:
        typer.echo(f"{bank}: no additions")


@index_app.command("remove")
def remove_cmd(
    bank: Path = typer.Argument(..., help="Support bank folder."),
    addition_id: str = typer.Argument(..., help="Addition id shown by `ragsam index list` (e.g. added-0001)."),
) -> None:
    """Remove one addition (its vectors, rows and slices) from a bank, atomically.

    Example: ragsam index remove banks/btcv added-0001
    """
    from ragsam.retrieval.bank_edit import addition_summary, remove_addition

    addition = remove_addition(bank, addition_id)
    typer.echo(f"{bank}: removed {addition_summary(addition)}")
