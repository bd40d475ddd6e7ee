"""Hostile uploads built in seconds: zip and gzip bombs without compressing gigabytes, links, clashes.

A deflate segment ended with ``Z_FULL_FLUSH`` does not refer to what came before it, so one
compressed 16 MiB run of zeros repeated N times is a valid stream of N x 16 MiB zeros; the
CRC-32 is computed over the real bytes (about 0.7 s per GiB).
"""

from __future__ import annotations

import functools
import gzip
import io
import stat
import struct
import zipfile
import zlib

import numpy as np

SEGMENT = 1 << 24


@functools.lru_cache(maxsize=4)
def _zero_segment() -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(bytes(SEGMENT)) + c.flush(zlib.Z_FULL_FLUSH)


def deflate_zeros(prefix: bytes, zeros: int) -> tuple[bytes, int, int]:
    """``(raw deflate stream, crc32, size)`` of ``prefix`` then ``zeros`` zero bytes (``zeros`` % 16 MiB == 0)."""
    assert zeros % SEGMENT == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(prefix)
    block = bytes(SEGMENT)
    for _ in range(zeros // SEGMENT):
        crc = zlib.crc32(block, crc)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # an empty final block
    return head + _zero_segment() * (zeros // SEGMENT) + tail, crc, len(prefix) + zeros


def gzip_bomb(prefix: bytes, zeros: int) -> bytes:
    """A gzip file of ``prefix`` followed by ``zeros`` zero bytes."""
    stream, crc, size = deflate_zeros(prefix, zeros)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + stream + struct.pack("<II", crc, size & 0xFFFFFFFF)


def zip_raw(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip of ``(name, deflate stream, crc, declared size, unix mode)`` entries (sizes may lie)."""
    out, directory = io.BytesIO(), io.BytesIO()
    for name, stream, crc, size, mode in entries:
        offset = out.tell()
        raw = name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(stream), size, len(raw), 0))
        out.write(raw + stream)
        directory.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x0314, 20, 0, 8, 0, 0, crc, len(stream), size,
                                    len(raw), 0, 0, 0, 0, mode << 16, offset))
        directory.write(raw)
    start, cd = out.tell(), directory.getvalue()
    out.write(cd)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(cd), start, 0))
    return out.getvalue()


def zip_bomb(name: str, zeros: int, declared: int | None = None) -> bytes:
    """One entry of ``zeros`` zero bytes; ``declared`` makes its headers claim another size."""
    stream, crc, size = deflate_zeros(b"", zeros)
    return zip_raw([(name, stream, crc, size if declared is None else declared, stat.S_IFREG | 0o644)])


def zip_files(members: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    """A normal zip; ``modes`` sets an entry's unix mode (e.g. ``stat.S_IFLNK | 0o777`` for a link)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (modes or {}).get(name, stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def encrypted(data: bytes) -> bytes:
    """``data`` (a zip) with every entry flagged as encrypted."""
    raw = bytearray(data)
    for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := raw.find(signature, start)) >= 0:
            raw[start + at] |= 1
            start += 4
    return bytes(raw)


def nifti_header(shape_xyz: tuple[int, int, int], datatype: int = 4, bitpix: int = 16) -> bytes:
    """A NIfTI-1 header (348 bytes + 4 extension bytes) for an image of ``shape_xyz`` voxels, 1 mm."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *shape_xyz, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<h", header, 252, 1)  # qform_code
    struct.pack_into("<4s", header, 344, b"n+1\0")
    return bytes(header)


def nifti_bomb(shape_xyz: tuple[int, int, int], zeros: int, datatype: int = 4, bitpix: int = 16) -> bytes:
    """A ``.nii.gz`` whose header promises ``shape_xyz`` and whose stream holds ``zeros`` zero bytes."""
    return gzip_bomb(nifti_header(shape_xyz, datatype, bitpix), zeros)


def small_ct(shape_zyx: tuple[int, int, int] = (4, 16, 16)) -> bytes:
    """A valid small CT ``.nii.gz`` in HU (air and soft tissue)."""
    import tempfile
    from pathlib import Path

    import SimpleITK as sitk

    array = np.full(shape_zyx, -1000, np.int16)
    array[:, 4:12, 4:12] = 40
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        return path.read_bytes()


def plain_gzip(data: bytes) -> bytes:
    return gzip.compress(data, 1)
