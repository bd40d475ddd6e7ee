"""``ragsam app``: a local web app to see, correct and grow (view cases, segment scans, fix, add to the bank).

Starlette, uvicorn and the NiiVue bundle (``static/niivue``) are used only here, so
the rest of ragsam does not import them. Start it with :func:`serve` (what the command
line does) or build the ASGI application with :func:`create_app` from an :class:`AppOptions` (what the tests do).
Uploads and corrections are kept in a state folder and come back after a restart.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ragsam.app.options import AppOptions

__all__ = ["AppOptions", "Session", "create_app", "serve"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Session:
    """One app: its ASGI application, address, token (None when started without one) and state folder.

    The session holds its state folder's lock (one app per state folder) until :meth:`close`.
    """

    app: object
    host: str
    port: int
    token: str | None
    state: Path
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    def close(self) -> None:
        """Release the state folder (another app may then serve it)."""
        self.held.close()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")


def create_app(options: AppOptions) -> Session:
    """Build the app described by ``options`` (:class:`ragsam.app.options.AppOptions`).

    Scans kept in the state folder by an earlier run with the same folder come back
    (:mod:`ragsam.app.scan_record`; a damaged one is skipped with one logged line).

    Raises:
        InputError: a folder that does not exist, a bad bank or run, no token off loopback.
        FolderLockedError: another app is serving the same state folder.
    """
    from ragsam.errors import InputError

    o = options
    if o.bank is None and o.run is None and o.data is None:
        raise InputError(None, "give at least one of --bank, --run, --data")
    if o.token is False and o.host not in LOOPBACK:
        raise InputError(None, f"--no-token is refused on {o.host}: only a loopback address may run without a token")
    given = (("bank", o.bank), ("run", o.run), ("data", o.data), *(("predictions", f) for f in o.predictions))
    for name, folder in given:
        if folder is not None and not Path(folder).is_dir():
            raise InputError(folder, f"--{name} folder does not exist")
    sam2_weights = o.sam2_weights
    if sam2_weights == "auto":
        from ragsam.hub.detect import detect_weights

        sam2_weights = detect_weights().sam2_weights
    state_dir = o.state_dir()
    held = contextlib.ExitStack()
    try:
        return _build(o, sam2_weights, state_dir, held)
    except BaseException:
        held.close()
        raise


def _build(o: AppOptions, sam2_weights: str, state_dir: Path, held: contextlib.ExitStack) -> Session:
    """:func:`create_app` once the options are checked: lock and open the state folder, build the parts."""
    from ragsam.app.catalog import Catalog, label_names_for
    from ragsam.app.engine import Engine
    from ragsam.app.server import build_app
    from ragsam.errors import InputError
    from ragsam.utils.locking import folder_lock

    held.enter_context(folder_lock(state_dir))
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (state_dir / "scans").mkdir(mode=0o700, exist_ok=True)  # uploads are patient data
    except OSError as exc:
        raise InputError(state_dir, f"state folder cannot be created ({exc.strerror or type(exc).__name__})") from None
    roots = {"scans": state_dir / "scans"}
    if o.data is not None:
        roots["data"] = Path(o.data)
    for i, folder in enumerate(o.predictions):
        roots[f"predictions{i}"] = Path(folder)
    catalog = Catalog(roots, data="data" if o.data is not None else None,
                      predictions=tuple(f"predictions{i}" for i in range(len(o.predictions))))
    bank_dir = Path(o.bank) if o.bank is not None else None
    if bank_dir is not None:
        from ragsam.retrieval.bank import SupportBank

        SupportBank.load(bank_dir)  # a bad bank fails at start, not in the page
    if o.run is not None:
        from ragsam.inference.run_loader import read_run_config

        read_run_config(o.run)
    engine = Engine(bank_dir, Path(o.run) if o.run is not None else None, sam2_weights, o.k, o.device)
    token = secrets.token_urlsafe(24) if o.token is True else (o.token or None)
    hosts = {f"{h}:{o.port}" for h in ({o.host} | ({"127.0.0.1", "localhost"} if o.host in LOOPBACK else set()))}
    hosts |= {f"[{o.host}]:{o.port}"} if ":" in o.host else set()
    label_names = label_names_for(bank_dir)
    link = None
    if o.pacs is not None:
        from ragsam.app.pacs_link import PacsLink

        link = PacsLink(o.pacs, o.pacs_credentials, o.pacs_cache, label_names)
    app = build_app(catalog, engine, label_names, token=token, hosts=hosts,
                    max_upload_mb=o.max_upload_mb, cookie=o.cookie, pacs=link)
    return Session(app, o.host, o.port, token, state_dir, held)


def serve(session: Session) -> None:
    """Run the session's app with uvicorn until interrupted, then release its state folder."""
    import uvicorn

    try:
        uvicorn.run(session.app, host=session.host, port=session.port, log_level="warning")
    finally:
        session.close()
