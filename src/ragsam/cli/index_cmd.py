"""``ragsam index build|query|add|list|remove``: the DINOv2 + Faiss support bank, built and grown."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.options import parse_label_ids
from ragsam.cli.root import index_app


@index_app.command("build")
def build_cmd(
    prepared: Path = typer.Argument(..., help="Prepared slice cache (from `ragsam prepare`)."),
    out: Path = typer.Option(..., "-o", "--out", help="Bank folder to create."),
    embedder: str = typer.Option("facebook/dinov2-small", help="DINOv2 weights: Hugging Face id or folder, "
                                 "preset (dinov2-small), official .pth, 'random' or 'tiny'."),
    kind: str = typer.Option("auto", help="Faiss index: auto (exact flat below 100k slices, else IVF with "
                             "nprobe calibrated to recall@10 0.95, or flat when IVF would need more than a "
                             "quarter of its lists), flat, ivf, ivfpq (product-quantised, m = D/8 bytes a slice, a 10 x k "
                             "shortlist re-ranked exactly from the memory-mapped embeddings: for banks that "
                             "do not fit in memory) or hnsw."),
    refine: int | None = typer.Option(None, help="ivfpq only: re-rank a shortlist of refine x k slices "
                                      "exactly (default 10; 1 = only the k that PQ ranks first, re-ordered)."),
    pooling: str = typer.Option("cls", help="Slice descriptor: cls token or mean of patch tokens."),
    image_size: int = typer.Option(224, help="Embedder input side in pixels (multiple of 14)."),
    batch_size: int = typer.Option(32, help="Slices per embedder forward pass."),
    split: str | None = typer.Option(None, help="Only cases of this split (e.g. train), so test cases "
                                     "never serve as supports."),
    include_unlabelled: bool = typer.Option(False, help="Also embed cases without labels."),
    device: str | None = typer.Option(None, help="torch device (default: cuda if available)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bank."),
) -> None:
    """Embed every slice of the labelled cases with DINOv2 and index them with Faiss.

    Example: ragsam index build prepared/btcv -o banks/btcv --split train --embedder facebook/dinov2-base
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ragsam.retrieval.bank import BankOptions, build_bank

    console = Console(stderr=True)
    with Progress("embedding slices", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("embed", total=None)
        summary = build_bank(prepared, out, BankOptions(embedder_weights=embedder, kind=kind, pooling=pooling,
                             labelled_only=not include_unlabelled, batch_size=batch_size,
                             image_size=image_size, split=split, device=device, refine=refine), force=force,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    from ragsam.utils import ranks

    if not ranks.current().is_main:  # torchrun: rank 0 prints
        return
    typer.echo(f"{summary.path}: {summary.count} slices from {summary.cases} cases, {summary.dim}-d "
               f"{summary.embedder} embeddings, {summary.kind} index ({summary.seconds:.1f} s)")


@index_app.command("query")
def query_cmd(
    bank: Path = typer.Argument(..., help="Support bank folder (from `ragsam index build`)."),
    case: str | None = typer.Option(None, help="Query a slice of this case of the bank's prepared cache."),
    image: Path | None = typer.Option(None, help="Query a slice of this CT (NIfTI/NRRD/MHA file or DICOM folder)."),
    z: int = typer.Option(..., help="Slice index in canonical order (inferior first, as in the prepared cache)."),
    k: int = typer.Option(5, help="Neighbours to return."),
    exclude_own_case: bool = typer.Option(False, help="Never return slices of the --case itself."),
    require_organs: str = typer.Option("", help="Only slices containing all these label ids, e.g. 1,6."),
    z_prior: float | None = typer.Option(None, help="Weight w of the penalty w*|rel_z query - rel_z support|."),
    prepared: Path | None = typer.Option(None, help="Where the bank's prepared cache is now, if it moved."),
    device: str | None = typer.Option(None, help="torch device (default: cuda if available)."),
) -> None:
    """Show the support slices most similar to one query slice.

    Example: ragsam index query banks/btcv --case img0035 --z 60 --k 5 --exclude-own-case --z-prior 0.5
    """
    from rich.console import Console
    from rich.table import Table

    from ragsam.retrieval.bank_query import query_slice

    result = query_slice(bank, z, case=case, image=image, k=k, exclude_own_case=exclude_own_case,
                         require_organs=parse_label_ids(require_organs, "--require-organs"), z_prior=z_prior,
                         prepared_dir=prepared, device=device)
    names, source, rel_z = result.organ_names, result.source, result.rel_z
    table = Table(title=f"{k} nearest support slices to {source} z={z} (rel_z {rel_z:.3f})")
    for column in ("rank", "case", "z", "rel_z", "similarity", "score", "organs"):
        table.add_column(column, justify="right" if column not in ("case", "organs") else "left")
    for rank, nb in enumerate(result.neighbours, 1):
        organs = ", ".join(names.get(o, str(o)) for o in nb.organs) or "-"
        table.add_row(str(rank), nb.case_id, str(nb.z), f"{nb.rel_z:.3f}", f"{nb.similarity:.4f}",
                      f"{nb.score:.4f}", organs)
    Console(width=160).print(table)


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
