"""``ragsam pacs list|segment|add-support``: a PACS in and out over DICOMweb (e.g. Orthanc)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ragsam.cli.root import app

pacs_app = typer.Typer(
    help=("Work with a PACS over DICOMweb (QIDO-RS, WADO-RS, STOW-RS): list studies, segment a CT series "
          "and store the result as a DICOM SEG in its study, add a corrected SEG to a support bank. "
          "Credentials come from RAGSAM_PACS_USER + RAGSAM_PACS_PASSWORD, RAGSAM_PACS_TOKEN or "
          "--credentials FILE (never the command line).\n\n"
          "Example: ragsam pacs list http://127.0.0.1:8042/dicom-web"),
    no_args_is_help=True,
)
app.add_typer(pacs_app, name="pacs")

_URL = typer.Argument(..., metavar="URL", help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web (Orthanc).")
_CREDENTIALS = typer.Option(None, "--credentials", help='Private JSON file {"user": ..., "password": ...} or '
                            '{"token": ...} (chmod 600); default: the RAGSAM_PACS_* environment variables.')
_CACHE = typer.Option(None, "--cache", help="Where fetched instances are kept by SOP Instance UID "
                      "(default: RAGSAM_PACS_CACHE, else ~/.cache/ragsam/pacs).")


def _connect(url: str, credentials: Path | None):
    from ragsam.pacs.client import Pacs
    from ragsam.pacs.credentials import load_credentials

    return Pacs(url, load_credentials(credentials))


@pacs_app.command("list")
def list_cmd(
    url: str = _URL,
    credentials: Path | None = _CREDENTIALS,
    patient: str | None = typer.Option(None, "--patient-id", help="Only studies of this PatientID."),
    limit: int = typer.Option(100, "--limit", help="At most this many studies."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the studies of a PACS (QIDO-RS).

    Example: ragsam pacs list http://127.0.0.1:8042/dicom-web --limit 20
    """
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from ragsam.errors import InputError

    if limit < 1:
        raise InputError(None, f"--limit must be >= 1, got {limit}")
    rows = _connect(url, credentials).studies(limit=limit, filters={"PatientID": patient} if patient else None)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    table = Table(title=f"{len(rows)} studies on {url}")
    for column in ("study UID", "patient", "ID", "date", "description", "modalities", "series", "instances"):
        table.add_column(column, justify="right" if column in ("series", "instances") else "left", overflow="fold")
    for r in rows:
        table.add_row(r.study_uid, r.patient_name, r.patient_id, r.date, r.description, ",".join(r.modalities),
                      "" if r.series is None else str(r.series), "" if r.instances is None else str(r.instances))
    Console(width=200).print(table)


@pacs_app.command("segment")
def segment_cmd(
    url: str = _URL,
    study: str = typer.Option(..., "--study", help="StudyInstanceUID."),
    series: str | None = typer.Option(None, "--series", help="SeriesInstanceUID of the CT series "
                                      "(default: the study's only CT series)."),
    index: Path | None = typer.Option(None, "--index", help="Support bank: segment by retrieval (RAG)."),
    run: Path | None = typer.Option(None, "--run", help="Fine-tuned run (`ragsam train`); with --index: hybrid."),
    sam2: str = typer.Option("facebook/sam2.1-hiera-tiny", "--sam2", help="SAM 2 weights for --index."),
    sam2_run: Path | None = typer.Option(None, "--sam2-run", help="Fine-tuned SAM 2 run (`ragsam train-rag`)."),
    k: int = typer.Option(4, "--k", help="Support slices per query slice (--index)."),
    hybrid_weight: float = typer.Option(0.5, "--hybrid-weight", help="w of the retrieval term (hybrid)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Slices per model pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also write the labels here (.nii.gz)."),
    credentials: Path | None = _CREDENTIALS,
    cache: Path | None = _CACHE,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output."),
) -> None:
    """Fetch a CT series (WADO-RS), segment it, store the DICOM SEG into the same study (STOW-RS).

    A rerun fetches nothing already cached, segments nothing already segmented with the same
    model, and stores nothing the study already holds.

    Example: ragsam pacs segment http://127.0.0.1:8042/dicom-web --study 1.2.3 --index banks/btcv --sam2 tiny
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ragsam.pacs.cache import InstanceCache
    from ragsam.pacs.segment import PacsModel, pacs_segment

    model = PacsModel(index=index, run=run, sam2=sam2, sam2_run=sam2_run, k=k, hybrid_weight=hybrid_weight,
                      batch_size=batch_size, device=device)
    pacs = _connect(url, credentials)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), transient=True,
                  disable=as_json) as bar:
        task = bar.add_task("", total=None)
        result = pacs_segment(pacs, study, model, series_uid=series, cache=InstanceCache(cache), output=output,
                              force=force, progress=lambda stage, done, total: bar.update(
                                  task, description=stage, completed=done, total=total))
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    organs = ",".join(map(str, result.organs)) or "none"
    what = "stored" if result.stored else "already in the study, not stored again:"
    typer.echo(f"{url}: {what} SEG {result.seg_sop_uid} (series {result.seg_series_uid}, {result.method}, "
               f"organs {organs}) for series {result.series_uid}; {result.fetched} instances fetched, "
               f"{result.cached} from the cache; {result.seconds['total']:.1f} s")


@pacs_app.command("add-support")
def add_support_cmd(
    url: str = _URL,
    study: str = typer.Option(..., "--study", help="StudyInstanceUID."),
    seg: str = typer.Option(..., "--seg", help="The corrected SEG: its SeriesInstanceUID or SOPInstanceUID."),
    index: Path = typer.Option(..., "--index", help="Support bank to grow."),
    series: str | None = typer.Option(None, "--series", help="The CT series the SEG must segment (checked)."),
    slices: str | None = typer.Option(None, "--slices", help="Canonical z indices to add, e.g. 12,15-18 "
                                      "(default: every slice holding an organ)."),
    by: str | None = typer.Option(None, "--by", help="Name recorded as the author (default: login name)."),
    credentials: Path | None = _CREDENTIALS,
    cache: Path | None = _CACHE,
) -> None:
    """Add a SEG corrected in OHIF / 3D Slicer, with its CT series, to a support bank.

    Example: ragsam pacs add-support http://127.0.0.1:8042/dicom-web --study 1.2.3 --seg 1.2.3.4 --index banks/btcv
    """
    from ragsam.pacs.cache import InstanceCache
    from ragsam.pacs.support import pacs_add_support
    from ragsam.retrieval.bank_edit import addition_summary, parse_slices

    addition = pacs_add_support(_connect(url, credentials), study, seg, index, series_uid=series,
                                cache=InstanceCache(cache), slices=None if slices is None else parse_slices(slices),
                                added_by=by)
    typer.echo(f"{index}: added {addition_summary(addition)}")
