"""``ragsam predict``: segment CT volumes with a trained run."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.root import app


@app.command(
    "predict",
    help=(
        "Segment CT scans with a trained run: an image file, a DICOM series folder or a dataset "
        "folder of cases. Writes <case_id>.nii.gz label volumes on each input's own grid. A folder "
        "runs past a failed case (each failure is one line, exit 2) and a rerun skips the cases "
        "already done with the same inputs and run. --output-format dicom-seg (or both) writes a DICOM SEG "
        "on each DICOM series input (<case_id>.seg.dcm, beside the NIfTI with both).\n\n"
        "Example: ragsam predict runs/samed data/BTCV/img -o predictions/ --batch-size 8 "
        "(or: ragsam predict runs/samed ct_series/ -o pred/ct.nii.gz --output-format both)"
    ),
)
def predict_command(
    run: Path = typer.Argument(..., help="Run folder written by `ragsam train`."),
    input_path: Path = typer.Argument(..., metavar="IN", help="Image file, DICOM folder or dataset folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (or a .nii.gz file for one case)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Slices per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    layout: str = typer.Option("auto", "--layout", help="Dataset layout of IN (auto, nnunet, msd, btcv, ...)."),
    series: str | None = typer.Option(None, "--series", help="DICOM SeriesInstanceUID when a folder has several."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs and redo finished cases."),
    cpu_bf16: bool = typer.Option(False, "--cpu-bf16", help="bf16 autocast on CPUs with AVX512-BF16/AMX "
                                  "(faster for ViT-B, slower for small models; labels may differ slightly)."),
    output_format: str = typer.Option("nifti", "--output-format", help="nifti, dicom-seg (a DICOM SEG on the "
                                      "source series; DICOM input only) or both (the SEG beside the NIfTI)."),
    overlap: bool | None = typer.Option(None, "--overlap/--no-overlap", show_default=False,
                                        help="Read, assemble inputs, reduce labels and write in helper threads "
                                        "beside the model (default: on a GPU, or when torch leaves a CPU core free)."),
) -> None:
    """Parse, call :func:`ragsam.inference.predict`, print one line per case."""
    from ragsam.errors import CasesFailedError
    from ragsam.inference import PredictOptions, predict
    from ragsam.utils.device import resolve_device
    from ragsam.utils.precision import cpu_bf16_note

    note = cpu_bf16_note(resolve_device(device), cpu=cpu_bf16) if cpu_bf16 else None
    if note:
        typer.echo(f"ragsam: note: {note}", err=True)
    try:
        options = PredictOptions(batch_size=batch_size, device=device, series_uid=series, cpu_bf16=cpu_bf16,
                                 overlap=overlap, output_format=output_format)
        results = predict(run, input_path, output, options, force=force, layout=layout)
    except CasesFailedError as exc:  # the cases that did finish are reported, then one line per failure
        _print(exc.results)
        raise
    _print(results)


def _print(results: list) -> None:
    from ragsam.utils import ranks

    if not ranks.current().is_main:  # torchrun: every rank holds every result; rank 0 prints
        return
    for r in results:
        organs = ",".join(str(o) for o in r.organs) or "none"
        done = "already done, skipped" if r.skipped else f"{r.slices} slices, organs {organs}"
        seg = f" + {r.seg}" if r.seg is not None else ""
        typer.echo(f"{r.case_id}: {r.path}{seg} ({done})")
