"""DICOM series for the PACS tests, made from the shared real CT series (``ct_dicom``).

The shared series is anonymised down to empty Study / Series / SOP Instance UIDs (the SOP
Instance UID survives only in the file meta), which no PACS stores. :func:`write_series`
gives it the UIDs a scanner would (the SOP Instance UID from the file meta) and, on request,
changes it the way the fault tests need: other transfer syntaxes, a missing slice, uneven
spacing, another modality.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.826.0.1.3680043.8.498.1001"
SERIES = "1.2.826.0.1.3680043.8.498.1001.1"


def shared_files(ct_dicom: dict[str, Path]) -> list[Path]:
    return sorted(ct_dicom["image"].iterdir())


def write_series(ct_dicom: dict[str, Path], out: Path, study: str = STUDY, series: str = SERIES,
                 change: Callable[[int, pydicom.Dataset], pydicom.Dataset | None] | None = None,
                 uid_suffix: str = "") -> Path:
    """The shared series with UIDs (``change(i, ds)`` may edit each dataset, or drop it with ``None``)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(shared_files(ct_dicom)):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = str(ds.file_meta.MediaStorageSOPInstanceUID) + uid_suffix
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
        ds.PatientID, ds.PatientName = "RAGSAM-TEST-1", "Test^Abdomen"
        ds.StudyDescription = "abdomen CT (ragsam tests)"
        if change is not None:
            ds = change(i, ds)
            if ds is None:
                continue
        ds.save_as(out / f"{i:03d}.dcm", enforce_file_format=True)
    return out


def recode(syntax: str) -> Callable[[int, pydicom.Dataset], pydicom.Dataset]:
    """A ``change`` that re-encodes the pixels (decoded from JPEG 2000) in transfer syntax ``syntax``."""

    def change(_i: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        if syntax == ExplicitVRLittleEndian:
            ds.decompress()
        elif syntax in (RLELossless, JPEGLSLossless):
            ds.compress(syntax, ds.pixel_array)
        else:  # pragma: no cover - the tests ask for the ones above
            raise ValueError(syntax)
        return ds

    return change


def relabel_syntax(syntax: str) -> Callable[[int, pydicom.Dataset], pydicom.Dataset]:
    """A ``change`` that only declares another (encapsulated) transfer syntax for the same bytes."""

    def change(_i: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        ds.file_meta.TransferSyntaxUID = syntax
        return ds

    return change
