"""Scans segmented in the app: upload, segment in a worker thread, correct, add to the bank, re-segment.

A scan lives in ``<state>/scans/<id>/``::

    input/scan.nii.gz  or  input/dicom/...     the upload (a NIfTI file, or a zip of one DICOM series)
    labels.nii.gz                              the current labels, on the input's grid (download)
    scan.json                                  name, mode, state, corrected slices (ragsam.app.scan_record)

``<state>`` is the app's state folder: a new :class:`ScanStore` over it brings back every scan
whose record reads (a scan stopped while queued or running is queued again), so uploads and
corrections survive a restart.

The upload's own name is only shown, never used as a file name. An upload is received
and unpacked within the bounds of :mod:`ragsam.app.uploads`, then validated with the
readers the command line uses (``read_image`` and the CT check of ``ragsam segment``);
a bad file gets the same one-line message (naming the upload, not a server path) and
leaves nothing behind. Corrections arrive as a label volume on the input grid; the slices
that differ from the current labels (canonical z, the bank's slice order) become the
scan's corrected slices. Those are what "add to bank" appends
(:func:`ragsam.retrieval.bank_edit.add_slices`) and what re-segmentation passes as
``own_supports`` to :meth:`RagSegmenter.segment`.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragsam.app.scan_record import LOG, ScanRecord, load_records
from ragsam.app.uploads import (
    VALIDATION_LOCK,
    check_scan_size,
    dicom_folder,
    public_message,
    remove,
    unpack_zip,
    upload_name,
)
from ragsam.errors import InputError, RagsamError

MODES = ("rag", "finetuned", "hybrid")
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".zip")


@dataclass
class Scan:
    """One uploaded scan and its segmentation state (what the page polls)."""

    id: str
    name: str
    folder: Path
    input: Path
    mode: str
    state: str = "queued"          # queued | running | done | error
    done: int = 0
    total: int = 0
    error: str | None = None
    corrected: set[int] = field(default_factory=set)
    added: list[str] = field(default_factory=list)
    runs: int = 0
    stack: Any = None              # SliceStack of the input, sliced with the bank's settings
    origin: dict | None = None     # {"study", "series"} of a scan opened from the PACS (ragsam.app.pacs_link)
    view: Path | None = None       # a NIfTI copy of a DICOM input for the viewer (NiiVue reads files, not folders)
    created: float = field(default_factory=time.time)

    def public(self, text: str) -> str:
        """``text`` with this scan's server folders replaced by the scan's name (for the page)."""
        return public_message(text, {self.input: self.name, self.folder: f"scan {self.id}"})

    @property
    def labels_path(self) -> Path:
        return self.folder / "labels.nii.gz"

    def record(self) -> ScanRecord:
        """What is kept on disk (:mod:`ragsam.app.scan_record`)."""
        return ScanRecord(self.id, self.name, self.mode, self.input.relative_to(self.folder).as_posix(),
                          self.view.relative_to(self.folder).as_posix() if self.view else None,
                          dict(self.origin) if self.origin else None, self.state, self.error, self.runs,
                          self.done, self.total, sorted(self.corrected), list(self.added), self.created)

    @classmethod
    def from_record(cls, folder: Path, record: ScanRecord) -> Scan:
        return cls(record.id, record.name, folder, folder / record.input, record.mode, state=record.state,
                   error=record.error, done=record.done, total=record.total, corrected=set(record.corrected), added=list(record.added), runs=record.runs,
                   origin=record.origin, view=folder / record.view if record.view else None, created=record.created)

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "mode": self.mode, "state": self.state, "done": self.done,
                "total": self.total, "error": self.error, "corrected": sorted(self.corrected),
                "added": list(self.added), "runs": self.runs, "pacs": self.origin, "dicom": self.input.is_dir(),
                "image": ["scans", str((self.view or self.input).relative_to(self.folder.parent))],
                "labels": ["scans", f"{self.id}/labels.nii.gz"] if self.runs else None}


class ScanStore:
    """The app's scans and the one worker thread that segments them (models are used one job at a time).

    Scans recorded in ``folder`` by an earlier app come back; those stopped before their
    segmentation finished are queued again; a damaged one is skipped (one logged line).

    Args:
        folder: ``<state>/scans``.
        engine: the :class:`ragsam.app.engine.Engine` holding the models.
    """

    def __init__(self, folder: Path, engine: Any) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp"):  # uploads a stopped server was receiving
            remove(stale)
        self.engine = engine
        self.scans: dict[str, Scan] = {}
        self.lock = threading.Lock()
        self.save_lock = threading.Lock()
        self.jobs: queue.Queue = queue.Queue()
        for scan_folder, record in load_records(self.folder, MODES):
            scan = Scan.from_record(scan_folder, record)
            self.scans[scan.id] = scan
            if scan.state in ("queued", "running"):  # the app stopped before this segmentation finished
                scan.state, scan.done = "queued", 0
                self.jobs.put((scan, None))
        threading.Thread(target=self._work, name="ragsam-app-worker", daemon=True).start()

    # ----------------------------------------------------------------- upload
    def check_request(self, name: str, mode: str) -> str:
        """The upload's display name, once its name and mode are acceptable (before its body is read).

        Raises:
            InputError: a name that is not a NIfTI or zip file, or a mode the app cannot run.
        """
        safe = upload_name(name)
        if not safe.lower().endswith(UPLOAD_SUFFIXES):
            raise InputError(safe, "not a NIfTI file (.nii, .nii.gz) or a zip of a DICOM series")
        if mode not in MODES:
            raise InputError(None, f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.engine.check_mode(mode)
        return safe

    def staging(self) -> Path:
        """A new private folder for one upload's body (``<folder>/.<id>.tmp/``)."""
        while True:
            tmp = self.folder / f".{secrets.token_hex(4)}.tmp"
            try:
                tmp.mkdir(mode=0o700)
                return tmp
            except FileExistsError:
                continue

    def create(self, name: str, staged: Path, mode: str) -> Scan:
        """Validate an upload received into ``staged/body`` (see :meth:`staging`), then queue its segmentation.

        Uploads are unpacked and read one at a time (:data:`ragsam.app.uploads.VALIDATION_LOCK`).

        Raises:
            InputError: ``<name>: <problem>``, as the command line words it, never naming a
                server path; nothing is kept.
        """
        safe = self.check_request(name, mode)
        scan_id = staged.name[1:-4]
        try:
            with VALIDATION_LOCK:
                path = self._store(staged, safe)
                check_scan_size(path)
                self.engine.check_scan(path)
            final = self.folder / scan_id
            scan = Scan(scan_id, safe, final, final / path.relative_to(staged), mode)
            Scan(scan_id, safe, staged, path, mode, created=scan.created).record().write(staged)
            staged.rename(final)
        except RagsamError as exc:
            remove(staged)
            problem = getattr(exc, "problem", None) or str(exc)
            raise InputError(safe, self._public(problem, safe, staged)) from None
        except OSError as exc:
            remove(staged)
            raise InputError(safe, f"could not be stored ({exc.strerror or type(exc).__name__})") from None
        except Exception as exc:  # noqa: BLE001 - a reader's crash on a hostile file is the file's fault
            remove(staged)
            raise InputError(safe, self._public(f"not a readable scan ({type(exc).__name__}: {exc})", safe,
                                                staged)) from None
        except BaseException:
            remove(staged)
            raise
        with self.lock:
            self.scans[scan_id] = scan
        self.jobs.put((scan, {}))
        return scan

    def adopt_series(self, name: str, series: Path, mode: str, origin: dict) -> Scan:
        """A DICOM series folder fetched from the PACS (linked, not copied) becomes a scan, queued like an upload.

        Raises:
            InputError: ``<name>: <problem>`` (the reader's and CT checks of an upload); nothing is kept.
        """
        import os
        import shutil

        staged = self.staging()
        folder = staged / "input" / "dicom"
        try:
            folder.mkdir(parents=True)
            for path in sorted(series.iterdir()):
                try:
                    os.link(path, folder / path.name)
                except OSError:
                    shutil.copy2(path, folder / path.name)
            with VALIDATION_LOCK:
                self.engine.check_scan(folder)
                _write_view(folder, staged / "input" / "view.nii.gz")
            final = self.folder / staged.name[1:-4]
            scan = Scan(final.name, name, final, final / "input" / "dicom", mode, origin=dict(origin),
                        view=final / "input" / "view.nii.gz")
            Scan(scan.id, name, staged, folder, mode, origin=scan.origin, view=staged / "input" / "view.nii.gz",
                 created=scan.created).record().write(staged)
            staged.rename(final)
        except RagsamError as exc:
            remove(staged)
            problem = getattr(exc, "problem", None) or str(exc)
            raise InputError(name, self._public(problem, name, staged)) from None
        except BaseException:
            remove(staged)
            raise
        with self.lock:
            self.scans[scan.id] = scan
        self.jobs.put((scan, {}))
        return scan

    @staticmethod
    def _public(problem: str, name: str, staged: Path) -> str:
        return public_message(problem, {staged / "input" / "dicom": name, staged / "input" / "scan.nii.gz": name,
                                        staged / "input" / "scan.nii": name, staged: "upload"})

    @staticmethod
    def _store(staged: Path, name: str) -> Path:
        """Move or unpack ``staged/body`` into ``staged/input``; returns the file or DICOM folder to read."""
        body = staged / "body"
        folder = staged / "input"
        folder.mkdir()
        if not name.lower().endswith(".zip"):
            target = folder / ("scan.nii.gz" if name.lower().endswith(".gz") else "scan.nii")
            body.rename(target)
            return target
        try:
            unpack_zip(body, folder / "dicom")
        finally:
            body.unlink(missing_ok=True)
        return dicom_folder(folder / "dicom")

    def save(self, scan: Scan) -> None:
        """Write the scan's record (atomically); a failure is logged, the scan stays usable until a restart."""
        with self.save_lock:
            try:
                scan.record().write(scan.folder)
            except OSError as exc:
                LOG.warning("ragsam app: could not record scan %s: %s", scan.id, exc.strerror or exc)

    def stack(self, scan: Scan) -> Any:
        """The scan's slice stack (computed again for a scan restored from disk)."""
        if scan.stack is None:
            scan.stack = self.engine.stack(scan.input)
        return scan.stack

    # --------------------------------------------------------------- queries
    def get(self, scan_id: str) -> Scan:
        with self.lock:
            scan = self.scans.get(scan_id)
        if scan is None:
            raise InputError(None, f"no scan {scan_id!r}")
        return scan

    def all(self) -> list[Scan]:
        with self.lock:
            return list(self.scans.values())

    # ------------------------------------------------------------ correction
    def save_correction(self, scan: Scan, upload: Path) -> list[int]:
        """Replace the scan's labels with an edited volume (a NIfTI file on the input grid, moved from ``upload``).

        Returns:
            The scan's corrected canonical slices so far (sorted).
        Raises:
            InputError: unreadable labels, another grid, a volume too big to read, or a scan
                not segmented yet.
        """
        from ragsam.data.slices import to_canonical
        from ragsam.data.volume import read_image, read_labels, write_labels

        try:
            if scan.state != "done":
                raise InputError(None, f"scan {scan.name} is not segmented yet")
            with open(upload, "rb") as fh:
                suffix = ".nii.gz" if fh.read(2) == b"\x1f\x8b" else ".nii"
            edit_path = scan.folder / f"correction{suffix}"
            upload.rename(edit_path)
            with VALIDATION_LOCK:
                try:
                    check_scan_size(edit_path)
                    image = read_image(scan.input)
                    edited = read_labels(edit_path, reference=image)
                    current = read_labels(scan.labels_path, reference=image)
                except RagsamError as exc:
                    raise InputError("correction", scan.public(getattr(exc, "problem", None) or str(exc))) from None
                finally:
                    edit_path.unlink(missing_ok=True)
        finally:
            upload.unlink(missing_ok=True)
        grid = self.stack(scan).grid
        changed = to_canonical(edited.array != current.array, grid.axes, grid.flips).any(axis=(1, 2))
        write_labels(edited.array.astype(np.uint8), image.geometry, scan.labels_path, force=True)
        scan.corrected |= {int(z) for z in np.flatnonzero(changed)}
        self.save(scan)
        return sorted(scan.corrected)

    def corrected_slices(self, scan: Scan) -> tuple[list[int], np.ndarray, np.ndarray]:
        """``(z list, images float32 (m, S, S), labels uint8 (m, S, S))`` of the corrected slices."""
        from ragsam.data.slices import volume_to_slices
        from ragsam.data.volume import read_image, read_labels

        zs = sorted(scan.corrected)
        image = read_image(scan.input)
        stack = volume_to_slices(image, read_labels(scan.labels_path, reference=image), self.engine.settings())
        return zs, stack.images[zs], stack.labels[zs]

    def add_to_bank(self, scan: Scan) -> dict:
        """Append the scan's corrected slices to the bank (one addition); returns it as JSON."""
        if not scan.corrected:
            raise InputError(None, f"scan {scan.name} has no corrected slice to add")
        zs, images, labels = self.corrected_slices(scan)
        depth = len(self.stack(scan).images)
        addition = self.engine.add_slices(images, labels, f"app upload {scan.name} ({scan.id})", zs,
                                          [z / (depth - 1) if depth > 1 else 0.0 for z in zs])
        scan.added.append(addition.id)
        self.save(scan)
        return {"id": addition.id, "slices": addition.source_slices, "organs": addition.organs}

    def resegment(self, scan: Scan) -> None:
        """Queue a new segmentation with the scan's corrected slices as its own supports."""
        own = {}
        if scan.corrected:
            zs, _, labels = self.corrected_slices(scan)
            own = dict(zip(zs, labels, strict=True))
        scan.state, scan.done, scan.error = "queued", 0, None
        self.save(scan)
        self.jobs.put((scan, own))

    # ----------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            scan, own = self.jobs.get()
            scan.state = "running"

            def progress(done: int, total: int, scan: Scan = scan) -> None:
                scan.done, scan.total = done, total

            try:
                if own is None:  # restored from disk: its corrected slices are its own supports again
                    own = dict(zip(*self.corrected_slices(scan)[::2], strict=True)) if scan.corrected else {}
                scan.stack = self.engine.segment(scan.input, scan.labels_path, scan.mode, progress, own)
                scan.runs += 1
                scan.state = "done"
            except RagsamError as exc:
                scan.state, scan.error = "error", scan.public(str(exc))
            except Exception as exc:  # noqa: BLE001 - shown in the page, the server keeps running
                scan.state, scan.error = "error", scan.public(f"internal error: {type(exc).__name__}: {exc}")
            self.save(scan)


def _write_view(series: Path, out: Path) -> None:
    """The DICOM series as a NIfTI image (HU, int16 when exact) for the page's viewer."""
    import SimpleITK as sitk

    from ragsam.data.volume import read_image, to_sitk

    image = read_image(series)
    array = image.array
    if np.array_equal(array, np.round(array)) and array.min() >= -32768 and array.max() <= 32767:
        image = type(image)(array.astype(np.int16), image.geometry, image.path)
    sitk.WriteImage(to_sitk(image), str(out), True)
