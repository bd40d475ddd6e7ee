"""``ragsam app``: a local web app to see, correct and grow (view cases, segment scans, fix, add to the bank).

Starlette, uvicorn and the NiiVue bundle (``static/niivue``) are used only here, so
the rest of ragsam does not import them. Start it with :func:`serve` (what the command
line does) or build the ASGI application with :func:`create_app` (what the tests do).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Session:
    """One app: its ASGI application, address, token (None when started without one) and work folder."""

    app: object
    host: str
    port: int
    token: str | None
    work: Path

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")


def create_app(bank: str | os.PathLike | None = None, run: str | os.PathLike | None = None,
               data: str | os.PathLike | None = None, predictions: tuple[str | os.PathLike, ...] = (),
               host: str = "127.0.0.1", port: int = 8765, work: str | os.PathLike | None = None,
               sam2_weights: str = "auto", k: int = 4, device: str = "cpu", max_upload_mb: int = 1024,
               token: str | bool = True, pacs: str | None = None, pacs_credentials: str | os.PathLike | None = None,
               pacs_cache: str | os.PathLike | None = None) -> Session:
    """Build the app for the given folders.

    Args:
        bank: support bank (RAG, hybrid, supports shown, additions). run: fine-tuned run.
        data: a labelled dataset to browse. predictions: folders of predictions to show beside it.
        host, port: where it will listen.
        work: where uploads and their labels go (default: a new temporary folder).
        sam2_weights: SAM 2 for retrieval; ``auto`` = the demo's rule (SAM 2.1 Hiera-T when in
            the Hugging Face cache, else the tiny random model).
        k: supports per query slice. device: torch device rule. max_upload_mb: upload limit.
        token: the token every request must carry: True (default) a new random one, on every
            address (loopback too: other users and processes of the machine reach it); a string
            that token; False none (loopback only: any local process may then use the app).
        pacs: a DICOMweb root to open studies from and save SEGs to (:mod:`ragsam.app.pacs_link`);
            pacs_credentials: its credentials file (else the ``RAGSAM_PACS_*`` environment);
            pacs_cache: the instance cache (default: ``ragsam pacs``'s).
    Raises:
        InputError: a folder that does not exist, a bad bank or run, no token off loopback.
    """
    from ragsam.app.catalog import Catalog, label_names_for
    from ragsam.app.engine import Engine
    from ragsam.app.server import build_app
    from ragsam.errors import InputError

    if bank is None and run is None and data is None:
        raise InputError(None, "give at least one of --bank, --run, --data")
    if token is False and host not in LOOPBACK:
        raise InputError(None, f"--no-token is refused on {host}: only a loopback address may run without a token")
    if sam2_weights == "auto":
        from ragsam.hub.detect import detect_weights

        sam2_weights = detect_weights().sam2_weights
    work_dir = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="ragsam-app-"))
    (work_dir / "scans").mkdir(mode=0o700, parents=True, exist_ok=True)  # uploads are patient data
    roots = {"scans": work_dir / "scans"}
    if data is not None:
        roots["data"] = Path(data)
    for i, folder in enumerate(predictions):
        roots[f"predictions{i}"] = Path(folder)
    for name, folder in (("bank", bank), ("run", run)):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(folder, f"--{name} folder does not exist")
    catalog = Catalog(roots, data="data" if data is not None else None,
                      predictions=tuple(f"predictions{i}" for i in range(len(predictions))))
    bank_dir = Path(bank) if bank is not None else None
    if bank_dir is not None:
        from ragsam.retrieval.bank import SupportBank

        SupportBank.load(bank_dir)  # a bad bank fails at start, not in the page
    if run is not None:
        from ragsam.inference.run_loader import read_run_config

        read_run_config(run)
    engine = Engine(bank_dir, Path(run) if run is not None else None, sam2_weights, k, device)
    token = secrets.token_urlsafe(24) if token is True else (token or None)
    hosts = {f"{h}:{port}" for h in ({host} | ({"127.0.0.1", "localhost"} if host in LOOPBACK else set()))}
    hosts |= {f"[{host}]:{port}"} if ":" in host else set()
    label_names = label_names_for(bank_dir)
    link = None
    if pacs is not None:
        from ragsam.app.pacs_link import PacsLink

        link = PacsLink(pacs, pacs_credentials, pacs_cache, label_names)
    app = build_app(catalog, engine, label_names, token=token, hosts=hosts,
                    max_upload_mb=max_upload_mb, cookie=f"ragsam_token_{port}", pacs=link)
    return Session(app, host, port, token, work_dir)


def serve(session: Session) -> None:
    """Run the session's app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(session.app, host=session.host, port=session.port, log_level="warning")
