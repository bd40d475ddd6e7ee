"""What ``ragsam pacs`` fetched, kept on disk by SOP Instance UID, so a rerun downloads nothing again.

Layout (``--cache DIR``, else ``RAGSAM_PACS_CACHE``, else ``$XDG_CACHE_HOME/ragsam/pacs`` or
``~/.cache/ragsam/pacs``)::

    instances/<SOP Instance UID>.dcm     one fetched instance, as the PACS stored it (written atomically)
    series/<Series Instance UID>/        hard links to the instances of one series: the folder that
                                         ragsam's DICOM reader segments (rebuilt when the series changes)
    results/<Series Instance UID>/       label volumes of ``pacs segment`` (with the resume sidecars of
                                         ``segment`` / ``predict``, so an unchanged rerun segments nothing)

A file is named by its UID only after :func:`ragsam.pacs.client.check_uid` accepted it, and an
instance is only kept when the SOP Instance UID inside it is the one asked for. A fetch cut in
the middle leaves the instances received so far (each one whole); the rerun fetches the rest.
Instances are kept until the folder is deleted (it holds patient data: put it where such data
may live).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragsam.errors import InputError
from ragsam.pacs.client import check_uid
from ragsam.utils.atomic import atomic_dir, atomic_path

CACHE_ENV = "RAGSAM_PACS_CACHE"


def default_cache_dir() -> Path:
    """``RAGSAM_PACS_CACHE``, else ``$XDG_CACHE_HOME/ragsam/pacs``, else ``~/.cache/ragsam/pacs``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ragsam" / "pacs"


class InstanceCache:
    """Fetched DICOM instances under ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.instances = self.root / "instances"

    def path(self, sop_uid: str) -> Path:
        return self.instances / f"{check_uid(sop_uid, 'SOP Instance UID')}.dcm"

    def has(self, sop_uid: str) -> bool:
        return self.path(sop_uid).is_file()

    def put(self, sop_uid: str, dataset: Any, source: str) -> Path:
        """Keep a fetched dataset (atomically) as ``instances/<sop_uid>.dcm``.

        Raises:
            InputError: the dataset is another instance than the one asked for.
        """
        import pydicom

        found = str(getattr(dataset, "SOPInstanceUID", ""))
        if found != sop_uid:
            raise InputError(source, f"asked for instance {sop_uid}, the PACS sent {found or 'no SOP Instance UID'}")
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        path = self.path(sop_uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, force=True) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return path

    def series_folder(self, series_uid: str, sop_uids: Sequence[str]) -> Path:
        """``series/<series_uid>/`` holding exactly ``sop_uids`` (hard links; copies across file systems)."""
        folder = self.root / "series" / check_uid(series_uid, "Series Instance UID")
        wanted = {f"{uid}.dcm" for uid in sop_uids}
        if folder.is_dir() and {p.name for p in folder.iterdir()} == wanted:
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(folder, force=True) as tmp:
            for name in sorted(wanted):
                try:
                    os.link(self.instances / name, tmp / name)
                except OSError:
                    shutil.copy2(self.instances / name, tmp / name)
        return folder

    def results_dir(self, series_uid: str) -> Path:
        return self.root / "results" / check_uid(series_uid, "Series Instance UID")
