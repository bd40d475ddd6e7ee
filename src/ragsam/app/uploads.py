"""Uploads under hostile input: bounded disk and memory from the first byte to the validated scan.

What an upload may cost, and where each bound is enforced:

* the request body is written to a file as it arrives (:func:`receive_body`), refused past
  the upload limit (413) even without a ``Content-Length``;
* a zip is read from that file, never from memory (:func:`unpack_zip`): its central
  directory is at most :data:`MAX_ZIP_DIRECTORY` bytes and :data:`MAX_ZIP_ENTRIES` entries,
  each entry at most :data:`MAX_ENTRY_BYTES` and all together :data:`MAX_UNZIPPED_BYTES`
  (declared sizes checked before anything is unpacked, actual bytes counted while unpacking),
  a compression ratio above :data:`MAX_RATIO` is a bomb; symbolic links, duplicate names and a
  file that is also a folder (``a`` and ``a/b``) are refused;
* the volume a scan will become is priced from its header before it is read
  (:func:`check_scan_size`): stored voxel bytes plus the float32 copy :func:`read_image` makes
  must fit :data:`READ_BUDGET` (512 x 512 x 365 int16, 512 x 512 x 284 float32); a NIfTI's
  gzip stream is never decompressed past the bytes its header promises
  (:mod:`ragsam.data.file_checks`);
* :data:`VALIDATION_LOCK` lets one upload at a time be unpacked and read, so concurrent
  uploads do not add up; at most :data:`MAX_RECEIVING` bodies are received at once (503 after).

Every failure is an :class:`InputError` without a path (:class:`ragsam.app.scans.ScanStore`
names the upload, never a server path).
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import threading
import unicodedata
import zipfile
from pathlib import Path

from ragsam.errors import InputError

CHUNK = 1 << 20
MAX_ZIP_ENTRIES = 20_000
MAX_ZIP_DIRECTORY = 8 << 20
MAX_ENTRY_BYTES = 512 << 20
MAX_UNZIPPED_BYTES = 1 << 30
#: Deflate reaches ~3-10x on CT slices; zip-bomb detectors (Apache POI, Commons Compress) stop at 100x.
MAX_RATIO = 100
#: Entries smaller than this are not ratio-checked (headers and blank slices compress well).
RATIO_FLOOR = 1 << 20
#: Bytes one scan may take in memory while it is read: stored voxels + the float32 copy + a mask byte
#: (``read_image`` and its finite check). The server holds ~0.6 GB with its models loaded, and the
#: worker may be segmenting an accepted scan meanwhile: this keeps the whole under 1.5 GB.
READ_BUDGET = 640 << 20
#: Uploads whose bodies may be received at the same time.
MAX_RECEIVING = 4
#: Longest upload name kept (characters).
MAX_NAME = 200

VALIDATION_LOCK = threading.Lock()
#: Control, format (bidi overrides, zero-width) and line-separator characters: a name holding one
#: could break the one-line message or show another name than the file's.
_HIDDEN = ("Cc", "Cf", "Zl", "Zp")


def upload_name(name: str) -> str:
    """The upload's display name: the last path component, refused when it cannot be shown on one line."""
    safe = name.replace("\\", "/").rsplit("/", 1)[-1]
    if not safe:
        raise InputError(None, "the upload has no file name")
    if any(unicodedata.category(c) in _HIDDEN for c in safe):
        raise InputError(None, f"upload name {ascii(safe)} holds control characters")
    if len(safe) > MAX_NAME:
        raise InputError(None, f"upload name is {len(safe)} characters long; the limit is {MAX_NAME}")
    return safe


async def receive_body(request, target: Path, limit: int) -> int:
    """Stream a request body into ``target`` (created); returns its size in bytes.

    Raises:
        InputError: the body grew past ``limit`` bytes (the file is left for the caller to remove).
    """
    size = 0
    with open(target, "xb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InputError(None, f"upload larger than the limit of {limit >> 20} MiB")
            out.write(chunk)
    return size


def _zip_directory_size(path: Path) -> tuple[int, int]:
    """``(entries, bytes)`` of a zip's central directory, read from its end record (zip64 too).

    Raises:
        InputError: no end-of-central-directory record.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - (65_536 + 22)))
        tail = fh.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise InputError(None, "not a readable zip file")
        entries, directory = struct.unpack("<HI", tail[at + 10 : at + 16])
        locator = tail[at - 20 : at] if at >= 20 else b""
        if (entries == 0xFFFF or directory == 0xFFFFFFFF) and locator[:4] == b"PK\x06\x07":
            fh.seek(struct.unpack("<Q", locator[8:16])[0])
            record = fh.read(56)
            if record[:4] != b"PK\x06\x06" or len(record) < 56:
                raise InputError(None, "not a readable zip file (bad zip64 record)")
            entries, directory = struct.unpack("<QQ", record[32:48])
    return entries, directory


def _check_members(members: list[zipfile.ZipInfo]) -> None:
    names: set[str] = set()
    folders: set[str] = set()
    total = 0
    for m in members:
        mode = m.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise InputError(None, f"zip entry {m.filename!r} is a symbolic link")
        name = m.filename.rstrip("/")
        if name in names:
            raise InputError(None, f"zip entry {m.filename!r} appears twice")
        names.add(name)
        parts = name.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if m.is_dir():
            folders.add(name)
            continue
        if m.file_size > MAX_ENTRY_BYTES:
            raise InputError(None, f"zip entry {m.filename!r} unzips to {m.file_size >> 20} MiB; "
                                   f"the limit is {MAX_ENTRY_BYTES >> 20} MiB per entry")
        if m.file_size > RATIO_FLOOR and m.file_size > MAX_RATIO * max(m.compress_size, 1):
            raise InputError(None, f"zip entry {m.filename!r} is compressed {m.file_size / max(m.compress_size, 1):.0f}"
                                   f" times (a zip bomb?); the limit is {MAX_RATIO} times")
        total += m.file_size
        if total > MAX_UNZIPPED_BYTES:
            raise InputError(None, f"unzips to more than {MAX_UNZIPPED_BYTES >> 20} MiB")
    files = {m.filename for m in members if not m.is_dir()}
    clash = sorted(files & folders)
    if clash:
        raise InputError(None, f"zip entry {clash[0]!r} is both a file and a folder")


def unpack_zip(archive_path: Path, folder: Path) -> None:
    """Unpack a zip of DICOM files into ``folder`` (created) within the limits above.

    Raises:
        InputError: (path None; the caller names the upload) an unreadable zip, an entry
            escaping ``folder``, a link, a clash, or a limit passed.
    """
    from ragsam.utils.paths import resolve_inside

    entries, directory = _zip_directory_size(archive_path)
    if entries > MAX_ZIP_ENTRIES or directory > MAX_ZIP_DIRECTORY:
        raise InputError(None, f"the zip lists {entries} entries ({directory >> 10} KiB of directory); "
                               f"the limit is {MAX_ZIP_ENTRIES} entries")
    folder.mkdir()
    try:
        with zipfile.ZipFile(archive_path) as archive:
            members = archive.infolist()
            _check_members(members)
            written = 0
            for m in members:
                try:
                    target = resolve_inside(folder, m.filename, "zip")
                except InputError:
                    raise InputError(None, f"zip entry {m.filename!r} escapes the upload (absolute or ..)") from None
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(m) as src, open(target, "xb") as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > MAX_UNZIPPED_BYTES:
                            raise InputError(None, f"unzips to more than {MAX_UNZIPPED_BYTES >> 20} MiB")
                        out.write(chunk)
    except InputError as exc:
        raise InputError(None, exc.problem) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError,
            RuntimeError) as exc:  # bad CRC, truncated stream, encryption, unknown compression
        raise InputError(None, f"not a readable zip file ({exc})") from None
    except OSError as exc:
        raise InputError(None, f"could not be unpacked ({exc.strerror or type(exc).__name__})") from None


def dicom_folder(folder: Path) -> Path:
    """The folder holding the unpacked files (the only one with files, else ``folder``)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not files:
        raise InputError(None, "the zip file is empty")
    parents = {p.parent for p in files}
    return parents.pop() if len(parents) == 1 else folder


def check_scan_size(path: Path) -> None:
    """Refuse a scan whose voxels would not fit :data:`READ_BUDGET` once read, from its headers alone.

    Args:
        path: a ``.nii``/``.nii.gz`` file or a folder of one DICOM series.
    Raises:
        InputError: too many voxels for their type (or the header checks' own refusals).
    """
    if path.is_dir():
        voxels, item = _dicom_voxels(path)
    else:
        from ragsam.data.file_checks import read_nifti_header

        info = read_nifti_header(path)
        voxels, item = info["voxels"], max(int(info["bitpix"]), 8) // 8
    cap = READ_BUDGET // (item + 5)
    if voxels > cap:
        raise InputError(None, f"the scan holds {voxels:,} voxels of {item} byte(s); the app reads at most "
                               f"{cap:,}; segment bigger scans with `ragsam segment`")


def _dicom_voxels(folder: Path) -> tuple[int, int]:
    """``(voxels, bytes per voxel)`` of the one series in ``folder``: first file's size x file count."""
    import SimpleITK as sitk

    from ragsam.data.dicom import select_series

    series = select_series(folder)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(series.files[0]))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(series.files[0], "not a readable DICOM file (truncated or corrupt)") from None
    voxels = 1
    for d in reader.GetSize():
        voxels *= max(int(d), 1)
    item = sitk.Image(1, 1, reader.GetPixelID()).GetSizeOfPixelComponent()
    return voxels * len(series.files), item


def public_message(text: str, places: dict[Path, str]) -> str:
    """The first line of ``text`` with every server path in ``places`` (path -> shown name) replaced."""
    for folder, name in sorted(places.items(), key=lambda kv: -len(str(kv[0]))):
        for form in sorted({str(folder), str(Path(folder).resolve())}, key=len, reverse=True):
            text = text.replace(form + os.sep, name + "/").replace(form, name)
    lines = text.splitlines()
    return lines[0] if lines else text


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
