"""``ragsam app``: the local web app (view, segment, correct, grow the bank)."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.root import app


@app.command("app")
def app_cmd(
    bank: Path | None = typer.Option(None, "--bank", help="Support bank (RAG and hybrid segmentation, "
                                     "retrieved supports, corrections added here)."),
    run: Path | None = typer.Option(None, "--run", help="Fine-tuned run (fine-tuned and hybrid segmentation)."),
    data: Path | None = typer.Option(None, "--data", help="Labelled dataset whose cases the page lists."),
    predictions: list[Path] = typer.Option([], "--predictions", help="Prediction folder shown beside the "
                                           "ground truth: <dir>/<method>/<case>.nii.gz or <dir>/<case>.nii.gz "
                                           "(repeatable)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (every address requires the token in the "
                             "URL printed at start)."),
    port: int = typer.Option(8765, help="Port."),
    state: Path | None = typer.Option(None, "--state", "--work", help="Folder keeping uploads, scans opened "
                                      "from the PACS, their labels and corrections across restarts (private, "
                                      "0700; default: $RAGSAM_APP_STATE, else "
                                      "$XDG_STATE_HOME/ragsam/app/port-<port>, else "
                                      "~/.local/state/ragsam/app/port-<port>)."),
    sam2: str = typer.Option("auto", help="SAM 2 weights for retrieval: auto (SAM 2.1 Hiera-T when cached, "
                             "else the tiny random model, as the demo), tiny, a preset or a folder."),
    k: int = typer.Option(4, help="Support slices per query slice."),
    device: str = typer.Option("cpu", help="cpu, auto (CUDA when available), cuda or cuda:N."),
    max_upload_mb: int = typer.Option(1024, help="Largest accepted upload (MiB)."),
    pacs: str | None = typer.Option(None, "--pacs", help="DICOMweb root of a PACS to open studies from and "
                                    "save corrected segmentations to (DICOM SEG), e.g. http://127.0.0.1:8042/dicom-web; "
                                    "credentials as `ragsam pacs`."),
    pacs_credentials: Path | None = typer.Option(None, "--pacs-credentials", help="Private JSON credentials "
                                                 "file of the PACS (default: RAGSAM_PACS_* variables)."),
    no_token: bool = typer.Option(False, "--no-token", help="Serve without a token (loopback only): any user "
                                  "or process of this machine can then read the scans and change the bank."),
) -> None:
    """See, correct and grow: a local web app over a bank, a run and a dataset.

    Example: ragsam app --bank demo-output/bank --run demo-output/run --data demo-output/data
    --predictions demo-output/predictions
    """
    from ragsam.app import AppOptions, create_app, serve

    session = create_app(AppOptions(bank=bank, run=run, data=data, predictions=tuple(predictions), host=host,
                                    port=port, state=state, sam2_weights=sam2, k=k, device=device,
                                    max_upload_mb=max_upload_mb, token=not no_token, pacs=pacs,
                                    pacs_credentials=pacs_credentials))
    if no_token:
        typer.echo("ragsam app: warning: --no-token: any user or process of this machine can open this app, read "
                   "its scans and change the bank", err=True)
    typer.echo(f"ragsam app: open {session.url}  (uploads kept in {session.state}; Ctrl+C stops)")
    serve(session)
