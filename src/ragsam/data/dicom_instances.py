"""The instances of a DICOM series a SEG is built on or read onto: their headers and their slices.

pydicom is imported inside the functions. :func:`source_datasets` reads (or takes) the
instances and checks what a SEG must reference; :func:`slice_indices` finds each instance's
slice on a volume's grid by its position, so a SEG lies frame for frame on the instances
whatever order they are stored in (head-first, feet-first, rows mirrored).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragsam.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pydicom

#: Largest distance, in voxels, between an instance's position and a voxel plane of the labels.
POSITION_TOLERANCE_VOXELS = 1e-2
#: Largest difference between an instance's direction cosines and the labels' direction.
DIRECTION_TOLERANCE = 1e-4


def source_datasets(source_series: str | os.PathLike | Sequence[pydicom.Dataset],
                    series_uid: str | None = None) -> tuple[list[pydicom.Dataset], Path | None]:
    """The instances of the source series (headers only when read from a folder) and the folder.

    Args:
        source_series: a DICOM series folder (the one series, or ``series_uid`` among several)
            or the instances' datasets.
        series_uid: which series of the folder.
    Returns:
        ``(datasets, folder or None)``; SOP Instance / Class UIDs missing from a dataset are
        taken from its file meta information (where DICOM stores the same UIDs).
    Raises:
        InputError: unreadable files, several series, missing study / series / instance UIDs,
            multi-frame instances.
    """
    import pydicom

    folder: Path | None = None
    if isinstance(source_series, (str, os.PathLike)):
        from ragsam.data.dicom import select_series

        folder = Path(source_series)
        if not folder.is_dir():
            raise InputError(folder, "is not a DICOM series folder; a DICOM SEG needs the source series")
        series = select_series(folder, series_uid)
        datasets = []
        for f in series.files:
            try:
                datasets.append(pydicom.dcmread(f, stop_before_pixels=True))
            except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
                raise InputError(f, f"not a readable DICOM file ({exc})") from None
    else:
        datasets = list(source_series)
    if not datasets:
        raise InputError(folder, "the source series holds no instance")
    where = folder if folder is not None else getattr(datasets[0], "filename", None)
    out = [_with_instance_uids(ds) for ds in datasets]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID"):
        missing = sum(1 for ds in out if not str(ds.get(keyword, "") or "").strip())
        if missing:
            raise InputError(where, f"{missing} of {len(out)} DICOM instances have no {keyword} (anonymised?); "
                                    "a DICOM SEG must reference it: restore the UIDs or write NIfTI "
                                    "(--output-format nifti)")
    uids = sorted({str(ds.SeriesInstanceUID) for ds in out})
    if len(uids) > 1:
        raise InputError(where, f"the instances belong to {len(uids)} series ({', '.join(uids[:3])}); give one series")
    frames = [int(ds.get("NumberOfFrames", 1) or 1) for ds in out]
    if max(frames) > 1:
        raise InputError(where, f"multi-frame DICOM instances ({max(frames)} frames, e.g. enhanced CT) are not "
                                "supported as SEG sources; export the series as single-frame CT images")
    return out, folder


def _with_instance_uids(ds: pydicom.Dataset) -> pydicom.Dataset:
    meta = getattr(ds, "file_meta", None)
    fixes = {}
    for keyword, meta_keyword in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                  ("SOPClassUID", "MediaStorageSOPClassUID")):
        if not str(ds.get(keyword, "") or "").strip() and meta is not None and meta.get(meta_keyword):
            fixes[keyword] = str(meta.get(meta_keyword))
    if not fixes:
        return ds
    ds = ds.copy()  # the caller's dataset stays as it was
    for keyword, value in fixes.items():
        setattr(ds, keyword, value)
    return ds


def _floats(ds: pydicom.Dataset, keyword: str, n: int, where: Any) -> np.ndarray:
    try:
        values = np.array([float(v) for v in ds[keyword].value], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        values = np.zeros(0)
    if values.shape != (n,):
        raise InputError(where, f"DICOM instance {ds.get('SOPInstanceUID', '?')} lacks a valid {keyword}")
    return values


def slice_indices(datasets: Sequence[pydicom.Dataset], geometry: Any, where: Any) -> np.ndarray:
    """The z index, on ``geometry``, of each instance's plane; every plane must be one voxel plane.

    Args:
        datasets: single-frame instances (ImagePositionPatient, ImageOrientationPatient,
            PixelSpacing, Rows, Columns).
        geometry: the :class:`~ragsam.data.geometry.Geometry` of a volume read from them.
        where: named in messages.
    Returns:
        int64 ``(len(datasets),)``, a permutation of ``0..nz-1``.
    Raises:
        InputError: an instance off the grid (position, orientation, spacing, size), a missing
            or repeated plane; the message says which and by how much.
    """
    size, spacing = geometry.size, geometry.spacing
    direction = geometry.direction_matrix
    inverse = np.linalg.inv(geometry.index_to_world)
    origin = np.asarray(geometry.origin)
    out = np.empty(len(datasets), dtype=np.int64)
    for n, ds in enumerate(datasets):
        iop = _floats(ds, "ImageOrientationPatient", 6, where)
        ipp = _floats(ds, "ImagePositionPatient", 3, where)
        pixel = _floats(ds, "PixelSpacing", 2, where)  # (between rows, between columns) = (y, x)
        uid = ds.get("SOPInstanceUID", "?")
        if (int(ds.Columns), int(ds.Rows)) != (size[0], size[1]):
            raise InputError(where, f"instance {uid} is {ds.Columns}x{ds.Rows} pixels; the labels are "
                                    f"{size[0]}x{size[1]}: they are not on this series' grid")
        if np.abs(iop[:3] - direction[:, 0]).max() > DIRECTION_TOLERANCE or \
                np.abs(iop[3:] - direction[:, 1]).max() > DIRECTION_TOLERANCE:
            raise InputError(where, f"instance {uid} has orientation {np.round(iop, 5).tolist()}, the labels' rows and "
                                    f"columns run along {np.round(direction[:, :2].T.ravel(), 5).tolist()}")
        if np.abs(pixel - (spacing[1], spacing[0])).max() > POSITION_TOLERANCE_VOXELS * min(spacing[:2]):
            raise InputError(where, f"instance {uid} has pixel spacing {pixel.tolist()} mm, the labels "
                                    f"{[spacing[1], spacing[0]]} mm")
        index = inverse @ (ipp - origin)
        k = int(np.round(index[2]))
        if np.abs(index[:2]).max() > POSITION_TOLERANCE_VOXELS or abs(index[2] - k) > POSITION_TOLERANCE_VOXELS \
                or not 0 <= k < size[2]:
            raise InputError(where, f"instance {uid} at {ipp.tolist()} mm is not on a slice of the labels' grid "
                                    f"(voxel index {np.round(index, 3).tolist()} of {list(size)})")
        out[n] = k
    counts = np.bincount(out, minlength=size[2])
    if counts.max() > 1 or counts.min() == 0:
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        repeated = np.flatnonzero(counts > 1)[:5].tolist()
        raise InputError(where, f"the {len(datasets)} instances do not cover the labels' {size[2]} slices once each "
                                f"(slices without an instance: {missing}, with several: {repeated})")
    return out
