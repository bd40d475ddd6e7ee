"""The app's construction-time settings (:class:`AppOptions`) and where its state lives by default.

The state folder holds what must survive a restart of ``ragsam app`` (uploads, scans opened
from the PACS, their labels and corrections: :mod:`ragsam.app.scan_record`). Default:
``RAGSAM_APP_STATE``, else ``$XDG_STATE_HOME/ragsam/app/port-<port>``, else
``~/.local/state/ragsam/app/port-<port>``: the XDG place for data kept across restarts (not a
cache a cleaner may empty), one folder per port as the session cookie is, so two apps on one
machine do not share scans and the same command line finds its scans again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_ENV = "RAGSAM_APP_STATE"


def default_state_dir(port: int) -> Path:
    """``RAGSAM_APP_STATE``, else ``$XDG_STATE_HOME/ragsam/app/port-<port>``, else ``~/.local/state/...``."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ragsam" / "app" / f"port-{int(port)}"


@dataclass(frozen=True)
class AppOptions:
    """What one ``ragsam app`` serves and how (the command line's options, as given).

    Attributes:
        bank: support bank (RAG, hybrid, supports shown, additions). run: fine-tuned run.
        data: a labelled dataset to browse. predictions: folders of predictions to show beside it.
        host, port: where it will listen.
        state: where uploads, their labels and corrections are kept across restarts
            (None: :func:`default_state_dir`).
        sam2_weights: SAM 2 for retrieval; ``auto`` = the demo's rule (SAM 2.1 Hiera-T when in
            the Hugging Face cache, else the tiny random model).
        k: supports per query slice. device: torch device rule. max_upload_mb: upload limit (MiB).
        token: the token every request must carry: True (default) a new random one, on every
            address (loopback too: other users and processes of the machine reach it); a string
            that token; False none (loopback only: any local process may then use the app).
        pacs: a DICOMweb root to open studies from and save SEGs to (:mod:`ragsam.app.pacs_link`);
            pacs_credentials: its credentials file (else the ``RAGSAM_PACS_*`` environment);
            pacs_cache: the instance cache (default: ``ragsam pacs``'s).
    """

    bank: str | os.PathLike | None = None
    run: str | os.PathLike | None = None
    data: str | os.PathLike | None = None
    predictions: tuple[str | os.PathLike, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8765
    state: str | os.PathLike | None = None
    sam2_weights: str = "auto"
    k: int = 4
    device: str = "cpu"
    max_upload_mb: int = 1024
    token: str | bool = True
    pacs: str | None = None
    pacs_credentials: str | os.PathLike | None = None
    pacs_cache: str | os.PathLike | None = None

    def state_dir(self) -> Path:
        """The state folder (``state``, else :func:`default_state_dir` for ``port``)."""
        return Path(self.state).expanduser() if self.state is not None else default_state_dir(self.port)

    @property
    def cookie(self) -> str:
        """The session cookie's name (one per port: two apps on one host keep their own)."""
        return f"ragsam_token_{self.port}"
