"""Where ``--output-format`` puts each case's files (``ragsam.inference.outputs.case_outputs``)."""

from __future__ import annotations

import pytest

from ragsam.errors import InputError
from ragsam.inference.outputs import case_outputs, key_parts


def test_file_names_per_format(tmp_path):
    one, two = ["ct"], ["a", "b"]
    assert case_outputs(one, tmp_path / "x.nii.gz") == ([tmp_path / "x.nii.gz"], [()])
    assert case_outputs(one, tmp_path / "x.nii.gz", "both") == ([tmp_path / "x.nii.gz"], [(tmp_path / "x.seg.dcm",)])
    assert case_outputs(one, tmp_path / "x.nii.gz", "dicom-seg") == ([tmp_path / "x.seg.dcm"], [()])
    assert case_outputs(one, tmp_path / "x.seg.dcm", "dicom-seg") == ([tmp_path / "x.seg.dcm"], [()])
    assert case_outputs(one, tmp_path / "y.dcm", "dicom-seg") == ([tmp_path / "y.dcm"], [()])
    assert case_outputs(one, tmp_path / "out", "dicom-seg") == ([tmp_path / "out" / "ct.seg.dcm"], [()])
    assert case_outputs(two, tmp_path / "out", "both") == (
        [tmp_path / "out" / "a.nii.gz", tmp_path / "out" / "b.nii.gz"],
        [(tmp_path / "out" / "a.seg.dcm",), (tmp_path / "out" / "b.seg.dcm",)])
    with pytest.raises(InputError, match="with --output-format both, -o names the NIfTI file"):
        case_outputs(one, tmp_path / "x.seg.dcm", "both")
    with pytest.raises(InputError, match="output format must be one of nifti, dicom-seg, both, got 'seg'"):
        case_outputs(one, tmp_path / "x.nii.gz", "seg")


def test_nifti_keeps_earlier_model_keys():
    assert key_parts("nifti") == {}  # sidecars written before --output-format stay valid
    assert key_parts("both") == {"output_format": "both"} and key_parts("dicom-seg") == {"output_format": "dicom-seg"}
