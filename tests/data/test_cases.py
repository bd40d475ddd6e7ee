"""Case references, case-id rules and loading a case with labels paired by geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ragsam.data.cases import (
    CaseRef,
    check_case_ids,
    image_suffix,
    load_case,
    match_labels,
    split_channel,
    strip_suffix,
)
from ragsam.errors import InputError


def test_file_name_rules() -> None:
    assert image_suffix("img0001.nii.gz") == ".nii.gz" and image_suffix("A.NII.GZ") == ".NII.GZ"
    assert image_suffix("x.mha") == ".mha" and image_suffix("notes.txt") is None and image_suffix(".nii") is None
    assert strip_suffix("FLARE22_Tr_0001_0000.nii.gz") == "FLARE22_Tr_0001_0000"
    assert split_channel("FLARE22_Tr_0001_0000") == ("FLARE22_Tr_0001", 0)
    assert split_channel("la_003_0002") == ("la_003", 2)
    assert split_channel("case_12") == ("case_12", None)


def test_caseref_json_round_trip() -> None:
    ref = CaseRef("0001", Path("/d/img/img0001.nii.gz"), Path("/d/label/label0001.nii.gz"), "train")
    assert ref.to_json() == {"case_id": "0001", "image": "/d/img/img0001.nii.gz",
                             "labels": "/d/label/label0001.nii.gz", "subset": "train"}
    assert CaseRef.from_json(ref.to_json()) == ref
    bare = CaseRef("x", Path("x.nii"))
    assert CaseRef.from_json(bare.to_json()) == bare


def test_case_id_checks() -> None:
    refs = [CaseRef("b", Path("b.nii")), CaseRef("a", Path("a.nii"))]
    assert [r.case_id for r in check_case_ids(refs, "/d")] == ["a", "b"]
    with pytest.raises(InputError, match=r"^/d: duplicate case ids: 'a' \(a.nii, a2.nii\)"):
        check_case_ids([*refs, CaseRef("a", Path("a2.nii"))], "/d")
    with pytest.raises(InputError, match="unusable case id '..'"):
        check_case_ids([CaseRef("..", Path("x.nii"))], "/d")
    images = {f"c{i}": Path(f"c{i}.nii") for i in range(7)}
    with pytest.raises(InputError, match=r"7 image\(s\) have no label file: c0, c1, c2, c3, c4 and 2 more"):
        match_labels(images, {}, "/d", labels_expected=True)
    assert all(r.labels is None for r in match_labels(images, {}, "/d", labels_expected=False))


def test_load_case_pairs_dicom_labels_by_geometry(ct_dicom: dict[str, Path]) -> None:
    case = load_case(CaseRef("dicom", ct_dicom["image"], ct_dicom["labels"]))
    assert case.case_id == "dicom"
    assert case.labels.geometry == case.image.geometry
    naive = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_dicom["labels"])))
    np.testing.assert_array_equal(case.labels.array, naive[:, ::-1, :])
    assert float(np.median(case.image.array[case.labels.array == 1])) == 80.0  # spleen, HU


def test_load_case_unlabelled_and_mismatch(tmp_path: Path, ct3mm: dict[str, Path]) -> None:
    case = load_case(CaseRef("ct", ct3mm["image"]))
    assert case.labels is None and case.image.array.shape == (30, 101, 122)
    # Labels cropped by one slice cover other voxels: refused, naming the label file.
    lab = sitk.ReadImage(str(ct3mm["labels"]))
    cropped = lab[:, :, 1:]
    sitk.WriteImage(cropped, str(tmp_path / "cropped.nii.gz"))
    with pytest.raises(InputError) as err:
        load_case(CaseRef("ct", ct3mm["image"], tmp_path / "cropped.nii.gz"))
    assert err.value.path == str(tmp_path / "cropped.nii.gz")
    assert "size 122x101x29 vs 122x101x30 voxels" in err.value.problem
    assert "offset (0, 0, 3) mm" in err.value.problem
