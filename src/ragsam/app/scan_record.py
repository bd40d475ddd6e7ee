"""A scan's state on disk (``<state>/scans/<id>/scan.json``), so that scans survive an app restart.

One typed, versioned record per scan, written atomically (:func:`ragsam.utils.atomic.write_json`)
beside its input and labels::

    {"version": 1, "id": "1a2b3c4d", "name": "abdomen.nii.gz", "mode": "rag",
     "input": "input/scan.nii.gz", "view": null, "origin": null, "state": "done",
     "error": null, "runs": 1, "done": 12, "total": 12, "corrected": [3, 4], "added": [], "created": 1796600000.5}

``input`` and ``view`` are relative to the scan folder and must stay inside ``input/``; the
name is data, shown as text, and passes the upload-name checks again when read. An upload's
record is written into its private staging folder before that folder is renamed into place,
so a scan folder without a whole record is never one the app accepted. A record that cannot
be read (truncated by a crash, another version, a path escaping the folder, labels missing)
makes :func:`load_records` skip that scan with one logged line; start-up goes on.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragsam.errors import InputError

VERSION = 1
RECORD = "scan.json"
#: Scan folder names (``secrets.token_hex(4)``, see :meth:`ragsam.app.scans.ScanStore.staging`).
SCAN_ID = re.compile(r"[0-9a-f]{8}")
STATES = ("queued", "running", "done", "error")
LOG = logging.getLogger("ragsam.app")


@dataclass(frozen=True)
class ScanRecord:
    """What :class:`ragsam.app.scans.Scan` keeps on disk (paths relative to the scan folder)."""

    id: str
    name: str
    mode: str
    input: str
    view: str | None = None
    origin: dict | None = None
    state: str = "queued"
    error: str | None = None
    runs: int = 0
    done: int = 0
    total: int = 0
    corrected: list[int] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    created: float = 0.0  # seconds since the epoch (the scan list's order)

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "id": self.id, "name": self.name, "mode": self.mode, "input": self.input,
                "view": self.view, "origin": self.origin, "state": self.state, "error": self.error,
                "runs": self.runs, "done": self.done, "total": self.total, "corrected": sorted(self.corrected), "added": list(self.added),
                "created": self.created}

    def write(self, folder: Path) -> None:
        """Write ``folder/scan.json`` atomically (replacing the previous record)."""
        from ragsam.utils.atomic import write_json

        write_json(folder / RECORD, self.to_json(), force=True)

    @classmethod
    def read(cls, folder: Path, modes: tuple[str, ...]) -> ScanRecord:
        """The record of the scan folder ``folder``, checked against the folder's files.

        Raises:
            InputError: ``(folder/scan.json, problem)`` for a missing, truncated, foreign or
                inconsistent record.
        """
        from ragsam.app.uploads import upload_name

        path = folder / RECORD
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(path, "missing (a scan folder the app never finished storing)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(path, f"unreadable ({type(exc).__name__}: {exc})") from None
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            found = raw.get("version") if isinstance(raw, dict) else type(raw).__name__
            raise InputError(path, f"version {found!r}; this ragsam reads version {VERSION}")
        try:
            record = cls(id=_typed(raw, "id", str), name=_typed(raw, "name", str), mode=_typed(raw, "mode", str),
                         input=_typed(raw, "input", str), view=_typed(raw, "view", str, none=True),
                         origin=_typed(raw, "origin", dict, none=True), state=_typed(raw, "state", str),
                         error=_typed(raw, "error", str, none=True), runs=_typed(raw, "runs", int),
                         done=_typed(raw, "done", int), total=_typed(raw, "total", int),
                         corrected=[int(_typed({"z": z}, "z", int)) for z in _typed(raw, "corrected", list)],
                         added=[str(_typed({"a": a}, "a", str)) for a in _typed(raw, "added", list)],
                         created=float(_typed(raw, "created", (int, float))))
        except ValueError as exc:
            raise InputError(path, str(exc)) from None
        if record.id != folder.name or not SCAN_ID.fullmatch(record.id):
            raise InputError(path, f"id {record.id!r} is not its folder's name")
        if record.mode not in modes or record.state not in STATES or record.runs < 0:
            raise InputError(path, f"mode {record.mode!r}, state {record.state!r} or runs {record.runs} is not valid")
        try:
            if upload_name(record.name.replace("/", "_")) != record.name.replace("/", "_"):
                raise InputError(None, "name is not a plain display name")
        except InputError as exc:
            raise InputError(path, exc.problem) from None
        for key in ("input", "view"):
            _inside_input(folder, getattr(record, key), path, key)
        if record.runs and not (folder / "labels.nii.gz").is_file():
            raise InputError(path, "the scan was segmented but its labels.nii.gz is missing")
        return record


def _typed(raw: dict, key: str, kind: type | tuple[type, ...], none: bool = False) -> Any:
    value = raw.get(key)
    if value is None and none:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"field {key!r} is not a {names}")
    return value


def _inside_input(folder: Path, relative: str | None, source: Path, key: str) -> None:
    from ragsam.utils.paths import resolve_inside

    if relative is None:
        return
    target = resolve_inside(folder / "input", Path(relative).relative_to("input") if relative.startswith("input/")
                            else Path("..", relative), source)  # outside input/ -> refused
    if not target.exists():
        raise InputError(source, f"{key} {relative!r} is missing")


def load_records(scans_dir: Path, modes: tuple[str, ...]) -> list[tuple[Path, ScanRecord]]:
    """The readable records under ``scans_dir`` (oldest first); each damaged one logged and skipped."""
    found = []
    for folder in sorted(p for p in scans_dir.iterdir() if p.is_dir() and SCAN_ID.fullmatch(p.name)):
        for stale in [*folder.glob(".*.tmp*"), *folder.glob(".correction-*.upload")]:  # writes a stop cut short
            if stale.is_file() and not stale.is_symlink():
                stale.unlink(missing_ok=True)
        try:
            found.append((folder, ScanRecord.read(folder, modes)))
        except InputError as exc:
            LOG.warning("ragsam app: skipped a damaged scan: %s", exc)
    return sorted(found, key=lambda item: (item[1].created, item[1].id))
