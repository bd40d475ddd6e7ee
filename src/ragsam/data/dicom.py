"""DICOM series folders: list the series, check slice positions, read one as HU.

SimpleITK's ``ImageSeriesReader`` (GDCM) orders the files by slice position and
applies RescaleSlope/RescaleIntercept, so the voxels come out in Hounsfield
units. It only warns on missing or repeated slices; we refuse them, because a
volume with a hidden gap puts every label above the gap at the wrong height.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ragsam.errors import InputError
from ragsam.utils.native_output import captured_native_output

#: Two slices closer than this (mm) along the slice normal are the same position.
SAME_POSITION_MM = 1e-3
#: Relative deviation of a slice gap from the median gap above which spacing is irregular.
GAP_TOLERANCE = 0.01
#: File suffixes that must be readable DICOM when found in a series folder.
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series in a folder.

    Attributes:
        uid: SeriesInstanceUID as GDCM reports it (may be ``""`` in anonymised data).
        files: the files of the series, ordered by slice position.
        description: SeriesDescription (0008,103E), stripped; ``""`` when absent.
    """

    uid: str
    files: tuple[Path, ...]
    description: str

    def label(self) -> str:
        """``'<uid>' (N slices, "description")`` for messages."""
        desc = f', "{self.description}"' if self.description else ""
        return f"{self.uid or '(empty UID)'!r} ({len(self.files)} slices{desc})"


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Silence ITK's and GDCM's warnings (we raise our own, clearer errors instead)."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with captured_native_output():
            yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(path, "not a readable DICOM file (truncated or corrupt)") from None
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def has_dicom_series(folder: str | os.PathLike) -> bool:
    """True when GDCM finds at least one DICOM series directly in ``folder``."""
    with _quiet_itk():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def list_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """The DICOM series directly inside ``folder`` (not recursive), sorted by UID.

    Raises:
        InputError: the folder is empty or holds no DICOM series.
    """
    folder = Path(folder)
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError(folder, "folder is empty")
    with _quiet_itk():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not uids:
        subdirs = sorted(p.name for p in entries if p.is_dir())
        hint = (
            f"; it has sub-folders ({', '.join(subdirs[:5])}{', ...' if len(subdirs) > 5 else ''}): pass the series folder itself"
            if subdirs
            else "; pass a DICOM series folder or an image file"
        )
        raise InputError(folder, f"no DICOM series found directly in this folder ({len(entries)} entries){hint}")
    series = []
    for uid in sorted(uids):
        files = tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        description = _tag(_header(files[0]), "0008|103e") if files else ""
        series.append(SeriesInfo(uid=uid, files=files, description=description))
    # GDCM silently leaves unreadable files out of every series; name them instead of
    # reporting the hole they leave as a "missing slice".
    claimed = {f.resolve() for s in series for f in s.files}
    for entry in sorted(entries):
        if entry.suffix.lower() in DICOM_SUFFIXES and entry.is_file() and entry.resolve() not in claimed:
            _header(entry)
    return series


def select_series(folder: str | os.PathLike, series_uid: str | None = None) -> SeriesInfo:
    """Pick one series: the only one, or ``series_uid``.

    Raises:
        InputError: several series and no (or an unknown) ``series_uid``; the message
            lists every series with its slice count and description.
    """
    folder = Path(folder)
    series = list_series(folder)
    listing = "; ".join(s.label() for s in series)
    if series_uid is not None:
        for s in series:
            if s.uid == series_uid:
                return s
        raise InputError(folder, f"no DICOM series with UID {series_uid!r}; the folder holds: {listing}")
    if len(series) > 1:
        raise InputError(folder, f"holds {len(series)} DICOM series, choose one with series_uid (--series-uid): {listing}")
    return series[0]


def slice_positions(files: tuple[Path, ...] | list[Path]) -> np.ndarray:
    """Position (mm) of each file's slice along the slice normal, in file order, ``(N,)``.

    The normal is the cross product of the row and column directions of
    ImageOrientationPatient (0020,0037) of the first file; the position is the
    projection of ImagePositionPatient (0020,0032) on it.

    Raises:
        InputError: a file lacks position/orientation tags or cannot be read.
    """
    normal: np.ndarray | None = None
    positions = []
    for f in files:
        reader = _header(Path(f))
        ipp, iop = _tag(reader, "0020|0032"), _tag(reader, "0020|0037")
        try:
            pos = np.array([float(v) for v in ipp.split("\\")], dtype=np.float64)
            if normal is None:
                cosines = np.array([float(v) for v in iop.split("\\")], dtype=np.float64)
                normal = np.cross(cosines[:3], cosines[3:6])
        except (ValueError, IndexError):
            raise InputError(f, f"DICOM slice lacks a valid position/orientation (IPP {ipp!r}, IOP {iop!r})") from None
        if pos.shape != (3,):
            raise InputError(f, f"DICOM ImagePositionPatient {ipp!r} is not 3 numbers")
        positions.append(float(pos @ normal))
    return np.asarray(positions)


def check_slice_positions(folder: str | os.PathLike, files: tuple[Path, ...] | list[Path]) -> None:
    """Refuse a series with repeated slice positions or irregular gaps (missing slices).

    Raises:
        InputError: naming ``folder`` and the offending z positions (mm).
    """
    if len(files) < 2:
        return
    z = np.sort(slice_positions(files))
    gaps = np.diff(z)
    repeated = np.flatnonzero(gaps < SAME_POSITION_MM)
    if repeated.size:
        where = ", ".join(f"{z[i]:g}" for i in repeated[:5])
        raise InputError(folder, f"DICOM series has repeated slices: two or more files at z = {where} mm")
    step = float(np.median(gaps))
    irregular = np.flatnonzero(np.abs(gaps - step) > GAP_TOLERANCE * step)
    if irregular.size:
        where = ", ".join(f"{z[i]:g}..{z[i + 1]:g} ({gaps[i]:g} mm)" for i in irregular[:5])
        raise InputError(
            folder,
            f"DICOM series has missing slices or irregular spacing: gap between z = {where}; "
            f"the other slices are {step:g} mm apart",
        )


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series as a 3-D image in HU (rescale slope/intercept applied).

    Args:
        folder: a folder holding DICOM files (one series, or several and ``series_uid``).
        series_uid: the SeriesInstanceUID to read when there are several.
    Returns:
        A 3-D ``SimpleITK.Image`` ordered by slice position.
    Raises:
        InputError: empty folder, no or several series, missing/repeated slices,
            unreadable files.
    """
    folder = Path(folder)
    series = select_series(folder, series_uid)
    check_slice_positions(folder, series.files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in series.files])
    try:
        with _quiet_itk():
            image = reader.Execute()
    except RuntimeError:
        raise InputError(folder, f"could not read DICOM series {series.label()} (a file is truncated or corrupt)") from None
    if image.GetDimension() != 3:
        raise InputError(folder, f"DICOM series {series.label()} is {image.GetDimension()}-D; expected a 3-D volume")
    return image
