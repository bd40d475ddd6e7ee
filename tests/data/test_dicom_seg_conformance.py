"""The SEGs ragsam writes pass dciodvfy, the DICOM standard's reference validator (dicom3tools).

``tools/ensure-test-packages.sh`` (run by ``make test``) installs it; without it this test fails.
dciodvfy checks every module of the Segmentation IOD (attributes, types, value representations,
code sequences, functional groups): an ``Error`` line is a SEG other software may refuse.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dicom_series import copy_series
from ragsam.data.dicom_seg import write_dicom_seg
from ragsam.data.volume import Volume, read_image, read_labels


@pytest.mark.parametrize("order", ["head-first", "feet-first"])
def test_written_seg_has_no_dciodvfy_error(ct_dicom, tmp_path, order):
    validator = shutil.which("dciodvfy")
    assert validator, "dciodvfy missing: run tools/ensure-test-packages.sh (apt-get install dicom3tools)"
    folder = copy_series(ct_dicom["image"], tmp_path / order, order)
    labels = read_labels(ct_dicom["labels"], reference=read_image(ct_dicom["image"])).array
    image = read_image(folder)
    labels = labels if order == "head-first" else labels[::-1].copy()
    seg = write_dicom_seg(Volume(labels, image.geometry, Path("l")), folder, "btcv", algorithm="RAG",
                          model_key="bank b; sam2 tiny", out=tmp_path / "case.seg.dcm")
    report = subprocess.run([validator, str(seg)], capture_output=True, text=True, timeout=300)
    lines = (report.stdout + report.stderr).splitlines()
    assert "Segmentation" in lines  # the IOD it validated against
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "\n".join(errors)
