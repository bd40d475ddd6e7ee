"""``ragsam segment``: segment a CT volume by retrieval-augmented SAM 2 (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ragsam.cli.root import app


@app.command(
    "segment",
    help=(
        "Segment CT volumes without training: retrieve the k most similar labelled slices "
        "from a support bank (DINOv2 + Faiss) for every slice and let SAM 2's memory attention "
        "segment it from them, prompt-free (RAG-SAM). Writes a label volume on each input's grid. "
        "IN is one image, a DICOM series folder or a dataset folder; for several cases -o is a "
        "folder (<case_id>.nii.gz each) and SAM 2 and the encoded supports are shared between cases. "
        "A folder runs past a failed case (each failure is one line, exit 2) and a rerun skips the "
        "cases already done with the same inputs, bank and settings. --output-format dicom-seg (or both) writes "
        "a DICOM SEG on each DICOM series input (<case_id>.seg.dcm, beside the NIfTI with both).\n\n"
        "Example: ragsam segment ct.nii.gz -o ct_labels.nii.gz --index banks/btcv "
        "--sam2 facebook/sam2.1-hiera-tiny --k 4 --device cuda (or --sam2-run runs/rag, from `ragsam train-rag`)"
    ),
)
def segment_command(
    input_path: Path = typer.Argument(..., metavar="IN", help="CT image file (NIfTI, NRRD, MHA), DICOM folder "
                                                              "or dataset folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Label file to write (.nii.gz), or a folder."),
    index: Path = typer.Option(..., "--index", help="Support bank folder (`ragsam index build`)."),
    sam2: str = typer.Option("facebook/sam2.1-hiera-tiny", "--sam2",
                             help="SAM 2 weights: Hugging Face id or folder, official .pt, 'random' or 'tiny'."),
    sam2_run: Path | None = typer.Option(None, "--sam2-run", help="Fine-tuned SAM 2 run (`ragsam train-rag`); "
                                                                   "replaces --sam2."),
    k: int = typer.Option(4, "--k", help="Support slices per query slice."),
    exclude_case: list[str] = typer.Option([], "--exclude-case", help="Bank case never used as support "
                                                                     "(repeatable), e.g. the query's own case."),
    z_prior: float = typer.Option(0.5, "--z-prior", help="Weight of the relative-z retrieval prior (0: off)."),
    pointers: str = typer.Option("sequential", "--pointer-positions",
                                 help="sequential (video semantics, best support nearest) or shared "
                                      "(support order ignored)."),
    run: Path | None = typer.Option(None, "--run", help="Fine-tuned run (`ragsam train`) to fuse with retrieval "
                                                       "(hybrid): p = (1-w) p_run + w p_retrieval per retrieved organ."),
    hybrid_weight: float = typer.Option(0.5, "--hybrid-weight", help="w of the retrieval term with --run."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Query slices per encoder pass."),
    cache_size: int = typer.Option(256, "--cache-size", help="Encoded support slices kept in memory."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    series: str | None = typer.Option(None, "--series", help="DICOM SeriesInstanceUID when a folder has several."),
    layout: str = typer.Option("auto", "--layout", help="Dataset layout of IN (auto detects it)."),
    output_format: str = typer.Option("nifti", "--output-format", help="nifti, dicom-seg (a DICOM SEG on the "
                                      "source series; DICOM input only) or both (the SEG beside the NIfTI)."),
    summary_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs and redo finished cases."),
) -> None:
    """Parse, call :func:`ragsam.inference.rag_segment.segment_cases`, print a summary per case."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ragsam.errors import CasesFailedError
    from ragsam.inference.rag_segment import SegmenterOptions, segment_cases
    from ragsam.retrieval.segment import SegmentOptions

    columns = (TextColumn("segmenting {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, transient=True, disable=summary_json) as bar:
            task = bar.add_task("", total=None)
            summaries = segment_cases(
                input_path, output, index,
                SegmenterOptions(sam2, sam2_run, cache_size=cache_size, device=device, pointer_positions=pointers),
                SegmentOptions(k=k, exclude_cases=tuple(exclude_case or ()), batch_size=batch_size,
                               series_uid=series, z_prior=z_prior, run_dir=run, hybrid_weight=hybrid_weight,
                               output_format=output_format),
                layout=layout, force=force,
                progress=lambda cid, done, total: bar.update(task, description=cid, completed=done, total=total))
    except CasesFailedError as exc:  # the finished cases are reported, then one line per failed case
        _print(exc.results, summary_json)
        raise
    _print(summaries, summary_json)


def _print(summaries: list, summary_json: bool) -> None:
    from ragsam.utils import ranks

    if not ranks.current().is_main:  # torchrun: every rank holds every summary; rank 0 prints
        return
    if summary_json:
        payload = [s.to_json() for s in summaries]
        typer.echo(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
        return
    for summary in summaries:
        if summary.skipped:
            typer.echo(f"{summary.output}: already done with the same input and settings, skipped")
            continue
        organs = ",".join(str(o) for o in summary.organs) or "none"
        seg = f" + {summary.seg_output}" if summary.seg_output else ""
        typer.echo(f"{summary.output}{seg}: {summary.slices} slices, k={summary.k}, organs {organs}; "
                   f"{summary.support_slices_encoded} support slices encoded ({summary.support_cache_hits} cache hits) "
                   f"in {summary.seconds:.1f} s with SAM 2 {summary.sam2.get('name')}")
