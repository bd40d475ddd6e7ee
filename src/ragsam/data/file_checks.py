"""Checks on the raw bytes of an image file, before and beside what SimpleITK makes of it.

SimpleITK hides some defects that would silently corrupt a dataset:

* a truncated NIfTI is zero-filled;
* NaN and Inf voxels of a float NIfTI come back as 0 (so a check of the returned array
  cannot see them; MetaImage and NRRD hand them back unchanged);
* a NIfTI ``pixdim`` of 0 is read as 1 mm and a negative one as its absolute value,
  and a negative MetaImage ``ElementSpacing`` likewise (with warnings on stderr).

These functions read the file themselves and raise :class:`InputError` naming it.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ragsam.errors import InputError

#: The largest volume read (voxels): 2**32 is 16 GiB of float32, beyond any CT; a header
#: promising more is refused before anything is allocated.
MAX_VOXELS = 2**32

#: NIfTI datatype codes of real floating-point voxels and their numpy types.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _parse_nifti_header(header: bytes) -> dict | None:
    """dims, bitpix, datatype, vox_offset, pixdim and byte order of a NIfTI-1/2 header."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            return {"endian": endian, "dims": struct.unpack(endian + "8h", header[40:56]),
                    "datatype": struct.unpack(endian + "h", header[70:72])[0],
                    "bitpix": struct.unpack(endian + "h", header[72:74])[0],
                    "pixdim": struct.unpack(endian + "8f", header[76:108]),
                    "offset": int(struct.unpack(endian + "f", header[108:112])[0])}
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            return {"endian": endian, "dims": struct.unpack(endian + "8q", header[16:80]),
                    "datatype": struct.unpack(endian + "h", header[12:14])[0],
                    "bitpix": struct.unpack(endian + "h", header[14:16])[0],
                    "pixdim": struct.unpack(endian + "8d", header[104:168]),
                    "offset": int(struct.unpack(endian + "q", header[168:176])[0])}
    return None


def _voxel_count(info: dict) -> int:
    ndim = max(0, min(int(info["dims"][0]), 7))
    return int(np.prod([max(int(d), 1) for d in info["dims"][1 : 1 + ndim]], dtype=np.float64))


def _data_end(info: dict) -> int:
    return max(info["offset"], 348) + _voxel_count(info) * max(int(info["bitpix"]), 8) // 8


def _open(path: Path, gz: bool):
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _chunks(path: Path, gz: bool, start: int, size: int = 1 << 22) -> Iterator[bytes]:
    with _open(path, gz) as fh:
        fh.seek(start) if not gz else fh.read(start)
        while chunk := fh.read(size):
            yield chunk


def _check_spacing(path: Path, spacing: list[float], what: str) -> None:
    bad = [s for s in spacing if not (np.isfinite(s) and s > 0)]
    if bad:
        raise InputError(path, f"voxel spacing must be positive, got {what} = {' '.join(f'{s:g}' for s in spacing)}")


def read_nifti_header(path: Path, max_voxels: int = MAX_VOXELS) -> dict:
    """Parse a NIfTI-1/2 header (only its first 540 bytes are decompressed) and cap its size.

    Args:
        path: ``.nii`` or ``.nii.gz``.
        max_voxels: refuse a header promising more voxels than this (before any allocation).
    Returns:
        ``{"endian", "dims", "datatype", "bitpix", "pixdim", "offset", "voxels"}``; ``dims``
        as stored (``dims[0]`` = rank), ``bitpix`` bits per voxel.
    Raises:
        InputError: no NIfTI header, an unreadable gzip stream, or more than ``max_voxels``.
    """
    gz = path.name.lower().endswith(".gz")
    try:
        with _open(path, gz) as fh:
            header = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"not a readable image (corrupt or truncated gzip stream: {exc})") from None
    info = _parse_nifti_header(header)
    if info is None:
        raise InputError(path, "not a readable image (no NIfTI header)")
    info["voxels"] = _voxel_count(info)
    if info["voxels"] > max_voxels:
        size = "x".join(str(max(int(d), 1)) for d in info["dims"][1 : 1 + max(0, min(int(info["dims"][0]), 7))])
        raise InputError(path, f"header promises {info['voxels']:.3g} voxels ({size}); refusing more than {max_voxels}")
    return info


def check_nifti_file(path: Path) -> None:
    """Refuse a corrupt or truncated NIfTI, zero/negative spacing, and non-finite float voxels.

    The gzip trailer's uncompressed size settles truncation in O(1); only float files
    (and a trailer that disagrees) are decompressed once more, to scan every voxel, and
    never past the bytes the header promises (a gzip bomb behind a small header costs no
    more than the image it claims to be).
    """
    gz = path.name.lower().endswith(".gz")
    info = read_nifti_header(path)
    try:
        needed = _data_end(info)
        ndim = max(1, min(int(info["dims"][0]), 3))
        _check_spacing(path, list(info["pixdim"][1 : 1 + ndim]), f"pixdim[1:{1 + ndim}]")
        floats = _NIFTI_FLOATS.get(int(info["datatype"]))
        if gz:
            with open(path, "rb") as raw:
                raw.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", raw.read(4))[0]
            if floats is None and isize == needed % (1 << 32):
                return  # gzip trailer: the stream holds exactly the promised bytes (fast path)
        if floats is None:
            total = _count_up_to(path, needed) if gz else path.stat().st_size
        else:
            total = _scan_floats(path, gz, info, info["endian"] + floats)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"not a readable image (corrupt or truncated gzip stream: {exc})") from None
    if total < needed:
        raise InputError(path, f"not a readable image (truncated NIfTI: {total} of {needed} bytes)")


def _count_up_to(path: Path, needed: int) -> int:
    """Decompressed bytes of a gzip file, counted no further than ``needed``."""
    total = 0
    for chunk in _chunks(path, True, 0):
        total += len(chunk)
        if total >= needed:
            break
    return total


def _scan_floats(path: Path, gz: bool, info: dict, dtype: str) -> int:
    """Scan the voxel data for NaN/Inf; return the file's total byte count."""
    itemsize = np.dtype(dtype).itemsize
    offset = max(info["offset"], 348)
    remaining = _voxel_count(info) * itemsize
    pending = b""
    bad = 0
    example = None
    for chunk in _chunks(path, gz, offset):
        data = pending + chunk[:remaining]
        remaining -= min(len(chunk), remaining)
        usable = len(data) - len(data) % itemsize
        values = np.frombuffer(data[:usable], dtype=dtype)
        finite = np.isfinite(values)
        if not finite.all():
            bad += int((~finite).sum())
            example = example if example is not None else values[~finite][0]
        pending = data[usable:]
        if remaining <= 0:
            break
    if bad:
        raise InputError(path, f"{bad} voxel(s) are not finite (e.g. {float(example)!r}); "
                               "replace NaN/Inf before using this image")
    return offset + _voxel_count(info) * itemsize - max(remaining, 0)


def check_metaimage_header(path: Path) -> None:
    """Refuse a MetaImage (``.mha``/``.mhd``) whose ``ElementSpacing`` is zero or negative."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    for line in head.split(b"\n"):
        key, _, value = line.partition(b"=")
        name = key.strip().decode("latin-1")
        if name.lower() in ("elementspacing", "elementsize"):
            try:
                spacing = [float(v) for v in value.split()]
            except ValueError:
                raise InputError(path, f"unreadable {name} {value.strip().decode('latin-1')!r}") from None
            _check_spacing(path, spacing, name)
        if name.lower() == "elementdatafile":
            return


def check_image_file(path: Path) -> None:
    """The raw-file checks that apply to ``path``'s format (NIfTI or MetaImage; others none)."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        check_nifti_file(path)
    elif name.endswith((".mha", ".mhd")):
        check_metaimage_header(path)


def check_finite(array: np.ndarray, path: Path) -> None:
    """Refuse NaN/Inf in an array read by SimpleITK (MetaImage, NRRD, DICOM rescale)."""
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            raise InputError(path, f"{int((~finite).sum())} voxel(s) are not finite (e.g. "
                                   f"{float(array[~finite].flat[0])!r}); replace NaN/Inf before using this image")


#: A CT volume in Hounsfield units reaches this or lower somewhere (air, lung or fat) ...
MIN_HU = -200.0
#: ... and spans at least this many HU.
MIN_HU_SPAN = 300.0


def check_ct_values(array: np.ndarray, path: str | os.PathLike | None) -> None:
    """Refuse an image that is not CT in HU: every command that reads a scan applies this one rule.

    A constant image, a normalised one ([0, 1]), an 8-bit picture (0..255) or an MR volume
    would otherwise be windowed into nonsense (and prepared, predicted or retrieved from).

    Args:
        array: the image voxels (any shape), in the file's units.
        path: the file, for the message.
    Raises:
        InputError: no voxel at or below :data:`MIN_HU`, or a range under :data:`MIN_HU_SPAN`.
    """
    arr = np.asarray(array)
    if arr.size == 0:
        raise InputError(path, "the image has no voxels")
    low, high = float(np.min(arr)), float(np.max(arr))
    if low > MIN_HU or high - low < MIN_HU_SPAN:
        kind = "a constant image" if low == high else "values"
        raise InputError(path, f"{kind} {low:.4g} .. {high:.4g} do not look like CT in HU (expected some voxels "
                               f"<= {MIN_HU:.0f} HU and a range of at least {MIN_HU_SPAN:.0f} HU)")
