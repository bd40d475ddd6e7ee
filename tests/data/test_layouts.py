"""Dataset layouts on tiny synthetic folders (8x8x4 NIfTI) and on the shared CT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ragsam.data.cases import CaseRef
from ragsam.data.layouts import detect_layout, discover_cases
from ragsam.errors import InputError


def _img(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 8, 8), value, np.int16)), str(path))
    return path


def _ids(refs: list[CaseRef]) -> list[str]:
    return [r.case_id for r in refs]


def _nnunet(root: Path, train=("b", "a"), test=("c",), meta: dict | None = None) -> Path:
    for cid in train:
        _img(root / "imagesTr" / f"{cid}_0000.nii.gz")
        _img(root / "labelsTr" / f"{cid}.nii.gz")
    for cid in test:
        _img(root / "imagesTs" / f"{cid}_0000.nii.gz")
    meta = meta if meta is not None else {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
                                          "numTraining": len(train), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_train_and_test(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "Dataset001_X")
    assert detect_layout(root) == "nnunet"
    refs = discover_cases(root)
    assert refs == [
        CaseRef("a", root / "imagesTr" / "a_0000.nii.gz", root / "labelsTr" / "a.nii.gz", "train"),
        CaseRef("b", root / "imagesTr" / "b_0000.nii.gz", root / "labelsTr" / "b.nii.gz", "train"),
        CaseRef("c", root / "imagesTs" / "c_0000.nii.gz", None, "test"),
    ]


def test_nnunet_problems(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "d1")
    (root / "labelsTr" / "a.nii.gz").unlink()
    with pytest.raises(InputError, match=r"1 image\(s\) have no label file: a$"):
        discover_cases(root)
    root = _nnunet(tmp_path / "d2")
    _img(root / "labelsTr" / "zz.nii.gz")
    with pytest.raises(InputError, match=r"1 label file\(s\) have no image: zz"):
        discover_cases(root)
    root = _nnunet(tmp_path / "d3", meta={"numTraining": 5, "file_ending": ".nii.gz"})
    with pytest.raises(InputError, match="numTraining is 5 but imagesTr holds 2 case"):
        discover_cases(root)
    root = _nnunet(tmp_path / "d4", test=())
    _img(root / "imagesTr" / "a_0001.nii.gz")
    with pytest.raises(InputError, match="a_0001.nii.gz is channel 1; only single-channel"):
        discover_cases(root)


def test_msd_dataset_json_and_path_escapes(tmp_path: Path) -> None:
    root = tmp_path / "Task09_Spleen"
    _img(root / "imagesTr" / "spleen_2.nii.gz")
    _img(root / "imagesTr" / "spleen_10_0000.nii.gz")  # nnU-Net v1 renamed channel file
    _img(root / "labelsTr" / "spleen_2.nii.gz")
    _img(root / "labelsTr" / "spleen_10.nii.gz")
    _img(root / "imagesTs" / "spleen_1.nii.gz")
    meta = {"training": [{"image": "./imagesTr/spleen_10.nii.gz", "label": "./labelsTr/spleen_10.nii.gz"},
                         {"image": "./imagesTr/spleen_2.nii.gz", "label": "./labelsTr/spleen_2.nii.gz"}],
            "test": ["./imagesTs/spleen_1.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    assert detect_layout(root) == "msd"
    refs = discover_cases(root)
    assert _ids(refs) == ["spleen_1", "spleen_10", "spleen_2"]
    assert refs[1].image == root / "imagesTr" / "spleen_10_0000.nii.gz" and refs[1].subset == "train"
    assert refs[0].labels is None and refs[0].subset == "test"
    _img(tmp_path / "outside.nii.gz")
    for rel, message in [("../outside.nii.gz", "escapes the dataset root"), (str(tmp_path / "outside.nii.gz"), "is absolute"),
                         ("./imagesTr/nope.nii.gz", "lists image './imagesTr/nope.nii.gz', which does not exist")]:
        meta["training"][0]["image"] = rel
        (root / "dataset.json").write_text(json.dumps(meta))
        with pytest.raises(InputError) as err:
            discover_cases(root)
        assert err.value.path == str(root / "dataset.json") and message in err.value.problem


@pytest.mark.parametrize("nesting", [".", "RawData/Training", "Abdomen/RawData/Training"])
def test_btcv(tmp_path: Path, nesting: str) -> None:
    base = tmp_path / "BTCV" / nesting
    for cid in ("0002", "0001", "0021"):
        _img(base / "img" / f"img{cid}.nii.gz")
        _img(base / "label" / f"label{cid}.nii.gz")
    root = tmp_path / "BTCV"
    assert detect_layout(root) == "btcv"
    refs = discover_cases(root)
    assert _ids(refs) == ["0001", "0002", "0021"]
    assert refs[0].image.name == "img0001.nii.gz" and refs[0].labels.name == "label0001.nii.gz"


def test_flare22(tmp_path: Path) -> None:
    base = tmp_path / "FLARE22" / "FLARE22_LabeledCase50"
    for i in (2, 1):
        _img(base / "images" / f"FLARE22_Tr_{i:04d}_0000.nii.gz")
        _img(base / "labels" / f"FLARE22_Tr_{i:04d}.nii.gz")
    assert detect_layout(tmp_path / "FLARE22") == "flare22"
    refs = discover_cases(tmp_path / "FLARE22")
    assert _ids(refs) == ["FLARE22_Tr_0001", "FLARE22_Tr_0002"]
    assert refs[1].labels == base.resolve() / "labels" / "FLARE22_Tr_0002.nii.gz"


def test_pairs_variants(tmp_path: Path) -> None:
    a = tmp_path / "a"  # (a) image folder + mask folder, tags ignored when matching
    _img(a / "images" / "p1_0000.nii.gz")
    _img(a / "images" / "p2_ct.mha")
    _img(a / "masks" / "p1_seg.nii.gz")
    _img(a / "masks" / "p2.nrrd")
    refs = discover_cases(a)
    assert detect_layout(a) == "pairs" and _ids(refs) == ["p1", "p2"]
    assert refs[1].labels == a / "masks" / "p2.nrrd"
    b = tmp_path / "b"  # (b) flat folder
    for cid in ("x", "y"):
        _img(b / f"{cid}_image.nii.gz")
        _img(b / f"{cid}_label.nii.gz")
    assert [(r.case_id, r.labels.name) for r in discover_cases(b)] == [("x", "x_label.nii.gz"), ("y", "y_label.nii.gz")]
    (b / "y_label.nii.gz").unlink()
    with pytest.raises(InputError, match=f"^{b}: 1 image\\(s\\) have no label file: y$"):
        discover_cases(b)
    c = tmp_path / "c"  # (c) one folder per case (KiTS-style names)
    _img(c / "case_0" / "imaging.nii.gz")
    _img(c / "case_0" / "segmentation.nii.gz")
    _img(c / "case_1" / "imaging.nii.gz")
    with pytest.raises(InputError, match=r"1 case folder\(s\) have no label file: case_1"):
        discover_cases(c)
    _img(c / "case_1" / "segmentation.nii.gz")
    assert [(r.case_id, r.image.name, r.labels.name) for r in discover_cases(c)] == [
        ("case_0", "imaging.nii.gz", "segmentation.nii.gz"), ("case_1", "imaging.nii.gz", "segmentation.nii.gz")]
    d = tmp_path / "d"  # (d) unlabelled images
    _img(d / "q.nii")
    _img(d / "r.nii.gz")
    assert [(r.case_id, r.labels) for r in discover_cases(d)] == [("q", None), ("r", None)]


def test_duplicates_empty_and_unknown(tmp_path: Path) -> None:
    dup = tmp_path / "dup"
    _img(dup / "a.nii.gz")
    _img(dup / "a.nrrd")
    with pytest.raises(InputError, match=f"^{dup}: duplicate case id 'a': a.nii.gz and a.nrrd"):
        discover_cases(dup)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=f"^{tmp_path / 'empty'}: folder is empty"):
        discover_cases(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no cases found"):
        discover_cases(tmp_path / "junk")
    with pytest.raises(InputError, match="does not exist"):
        discover_cases(tmp_path / "missing")
    with pytest.raises(InputError, match="unknown dataset layout 'kits'"):
        discover_cases(dup, layout="kits")
    with pytest.raises(InputError, match="nnU-Net layout needs an imagesTr folder"):
        discover_cases(dup, layout="nnunet")


def test_shared_data_file_dicom_and_case_folders(shared_data: Path, ct_dicom: dict[str, Path]) -> None:
    assert discover_cases(shared_data / "abdomen-ct-3mm" / "ct.nii.gz") == [
        CaseRef("ct", shared_data / "abdomen-ct-3mm" / "ct.nii.gz")]
    assert detect_layout(ct_dicom["image"]) == "dicom"
    assert discover_cases(ct_dicom["image"]) == [CaseRef("dicom", ct_dicom["image"])]
    # The shared folder is a set of case folders (pairs (c)); each is also a case folder itself (e).
    refs = discover_cases(shared_data)
    assert refs == [
        CaseRef("abdomen-ct-3mm", shared_data / "abdomen-ct-3mm" / "ct.nii.gz", shared_data / "abdomen-ct-3mm" / "labels.nii.gz"),
        CaseRef("abdomen-ct-dicom", ct_dicom["image"], ct_dicom["labels"]),
    ]
    assert discover_cases(shared_data / "abdomen-ct-dicom") == [refs[1]]


def test_one_case_id_per_case_whether_given_as_a_file_or_a_folder(tmp_path):
    """A BTCV image alone gets the id the BTCV folder gives it (``img0001`` before)."""
    from ragsam.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "btcv", n_cases=2, shape=(2, 8, 8))
    folder_ids = [c.case_id for c in discover_cases(data)]
    file_ids = [discover_cases(data / "img" / f"img{cid}.nii.gz")[0].case_id for cid in folder_ids]
    assert folder_ids == file_ids == ["0001", "0002"]
    other = tmp_path / "scan_0000.nii.gz"
    (other).write_bytes((data / "img" / "img0001.nii.gz").read_bytes())
    assert discover_cases(other)[0].case_id == "scan"
