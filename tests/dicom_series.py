"""Test helper: copies of the shared DICOM series that a DICOM SEG (and a PACS) can reference.

The shared series (``tests/assets/real-ct/abdomen-ct-dicom/dicom``) was anonymised with its
Study, Series, SOP Instance and SOP Class UIDs blanked in the data sets (the file meta keeps
the SOP UIDs). :func:`copy_series` writes a copy with those UIDs restored (deterministic
values) and, on request, stored the other way round:

* ``order="head-first"``: as scanned, instance 1 at the head (the shared series' order);
* ``order="feet-first"``: a feet-first supine scan (PatientPosition FFS): instance 1 at the
  feet, rows running from the patient's left to right (ImageOrientationPatient
  ``[-1, 0, 0, 0, 1, 0]``, the first column at the patient's left), positions and instance
  numbers rewritten accordingly. The pixel data (JPEG 2000 as shared) is kept byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid


def copy_series(src: Path, dst: Path, order: str = "head-first", tag: str = "ragsam-test") -> Path:
    """Write the series in ``src`` to ``dst`` with UIDs restored; returns ``dst``.

    Args:
        order: ``head-first`` or ``feet-first`` (see the module docstring).
        tag: seeds the Study / Series UIDs (two copies with the same tag share them).
    """
    assert order in ("head-first", "feet-first"), order
    dst.mkdir(parents=True, exist_ok=True)
    datasets = [pydicom.dcmread(f) for f in sorted(Path(src).glob("*.dcm"))]
    datasets.sort(key=lambda ds: -float(ds.ImagePositionPatient[2]))  # head (largest z) first
    study = generate_uid(entropy_srcs=[tag, "study"])
    series = generate_uid(entropy_srcs=[tag, order, "series"])
    n = len(datasets)
    for i, ds in enumerate(datasets):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.PatientID = ds.PatientID or "RAGSAM-TEST"
        ds.InstanceNumber = i + 1
        if order == "feet-first":
            ds.PatientPosition = "FFS"
            ds.InstanceNumber = n - i
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            columns_mm = (int(ds.Columns) - 1) * float(ds.PixelSpacing[1])
            ds.ImagePositionPatient = [x + columns_mm, y, z]  # first column now at the patient's left
            ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        ds.save_as(dst / f"{ds.InstanceNumber:04d}.dcm", enforce_file_format=True)
    return dst
