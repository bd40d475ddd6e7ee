"""evaluate(): case matching, geometry pairing, hand-computed numbers, report files, atomic output."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from ragsam.data.geometry import Geometry
from ragsam.data.volume import read_labels, write_labels
from ragsam.errors import InputError, OutputExistsError
from ragsam.evaluation.evaluate import EvaluationOptions, case_id_from_name, evaluate, match_cases
from ragsam.evaluation.report import print_table

SHAPE = (12, 10, 10)  # (z, y, x)
GEOM = Geometry((10, 10, 12), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
DIAG = math.sqrt((11 * 3.0) ** 2 + 9.0**2 + 9.0**2)  # worst-case HD95 of this grid, mm


def _labels(spleen_z: tuple[int, int] | None, liver: bool) -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    if spleen_z is not None:
        a[spleen_z[0]:spleen_z[1], 2:6, 2:6] = 1  # BTCV 1 spleen: a 4x4x4 cube
    if liver:
        a[8:11, 6:9, 5:9] = 6  # BTCV 6 liver
    return a


def make_folders(root: Path) -> tuple[Path, Path]:
    """Two cases. 0001: spleen shifted 2 slices (6 mm), liver exact. 0002: spleen exact, liver missed."""
    gt, pred = root / "gt", root / "pred"
    write_labels(_labels((2, 6), True), GEOM, gt / "label0001.nii.gz")
    write_labels(_labels((2, 6), True), GEOM, gt / "label0002.nii.gz")
    write_labels(_labels((4, 8), True), GEOM, pred / "0001.nii.gz")
    write_labels(_labels((2, 6), False), GEOM, pred / "0002.nii.gz")
    return pred, gt


@pytest.mark.parametrize(("name", "case_id"), [
    ("img0001.nii.gz", "0001"), ("label0001.nii.gz", "0001"), ("labels0003.nrrd", "0003"),
    ("FLARE22_Tr_0001_0000.nii.gz", "FLARE22_Tr_0001"), ("FLARE22_Tr_0001.nii.gz", "FLARE22_Tr_0001"),
    ("case0001_pred.nii.gz", "case0001"), ("case0001_gt.mha", "case0001"), ("pred_s01.nii", "s01"),
    ("segment1.nii.gz", "segment1"), ("labels.nii.gz", "labels"),
])
def test_case_id_from_name(name: str, case_id: str) -> None:
    assert case_id_from_name(name) == case_id


def test_match_cases_refusals(tmp_path: Path) -> None:
    pred, gt = make_folders(tmp_path)
    (pred / "0002.nii.gz").rename(pred / "0003.nii.gz")
    with pytest.raises(InputError, match=r"no prediction for '0002'; no ground truth in .* for '0003'"):
        match_cases(pred, gt)
    (pred / "0003.nii.gz").rename(pred / "0002.nii.gz")
    (pred / "notes.txt").write_text("ignored")
    assert [c.case_id for c in match_cases(pred, gt)] == ["0001", "0002"]
    write_labels(_labels(None, False), GEOM, pred / "0002_pred.nii.gz")
    with pytest.raises(InputError, match="case id '0002' comes from two files"):
        match_cases(pred, gt)
    with pytest.raises(InputError, match="is a file but the ground truth"):
        match_cases(pred / "0001.nii.gz", gt)
    with pytest.raises(InputError, match="does not exist"):
        match_cases(tmp_path / "nope", gt)
    (pred / "0002_pred.nii.gz").unlink()
    images = tmp_path / "images"
    write_labels(_labels(None, False), GEOM, images / "img0001_0000.nii.gz")
    with pytest.raises(InputError, match=r"no image for case\(s\) '0002'"):
        match_cases(pred, gt, images)


def test_two_folders_hand_computed(tmp_path: Path) -> None:
    pred, gt = make_folders(tmp_path)
    out = tmp_path / "eval"
    result = evaluate(pred, gt, EvaluationOptions(label_map="btcv", nsd_tolerance_mm=1.0, organs=[1, "liver"]), out_dir=out)
    assert result.case_ids == ["0001", "0002"] and result.organ_names == ["spleen", "liver"]
    got = {(r.case_id, r.organ_id): (r.dice, r.hd95, r.nsd) for r in result.rows}
    assert got[("0001", 1)] == pytest.approx((0.5, 6.0, 0.5))  # see test_metrics: 2-slice shift at 3 mm
    assert got[("0001", 6)] == pytest.approx((1.0, 0.0, 1.0))
    assert got[("0002", 1)] == pytest.approx((1.0, 0.0, 1.0))
    assert got[("0002", 6)] == pytest.approx((0.0, DIAG, 0.0))  # missed organ: worst-case HD95
    table = result.table()
    assert table.mean["dice"] == pytest.approx([0.75, 0.5])
    assert table.mean["hd95"] == pytest.approx([3.0, DIAG / 2])
    assert table.overall["dice"] == pytest.approx(0.625)
    assert table.overall["nsd"] == pytest.approx((0.75 + 0.5) / 2)

    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case_id", "organ_id", "organ", "dice", "hd95_mm", "nsd", "gt_voxels",
                             "pred_voxels", "nsd_tolerance_mm"]
    assert [(r["case_id"], r["organ"]) for r in rows] == [("0001", "spleen"), ("0001", "liver"),
                                                          ("0002", "spleen"), ("0002", "liver")]
    assert float(rows[0]["dice"]) == 0.5 and float(rows[0]["hd95_mm"]) == 6.0 and float(rows[0]["nsd"]) == 0.5
    assert (rows[3]["gt_voxels"], rows[3]["pred_voxels"]) == ("36", "0")
    data = json.loads((out / "metrics.json").read_text())
    assert data["settings"]["absent"] == "strict" and data["settings"]["nsd_tolerance_mm"] == {"1": 1.0, "6": 1.0}
    assert data["aggregate"]["mean"]["dice"] == 0.625
    assert data["aggregate"]["organs"][0]["dice_mean"] == 0.75 and data["aggregate"]["organs"][0]["dice_n"] == 2
    md = (out / "report.md").read_text()
    assert "| Metric | spleen | liver | Mean |" in md
    assert "| Dice (%) | 75.00 | 50.00 | 62.50 |" in md
    assert "![0001](overlays/0001.png)" in md
    for cid in ("0001", "0002"):
        assert (out / "overlays" / f"{cid}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    console = Console(record=True, width=200)
    print_table(result, console)
    text = console.export_text()
    assert "| Metric    |" in text.replace("┃", "|") and "75.00" in text and "62.50" in text


def test_absent_organs_are_na_and_samed_rule(tmp_path: Path) -> None:
    pred, gt = make_folders(tmp_path)
    result = evaluate(pred, gt, EvaluationOptions(label_map="btcv"))  # all 13 BTCV organs; only spleen and liver exist
    table = result.table()
    stomach = table.organ_names.index("stomach")
    assert math.isnan(table.mean["dice"][stomach]) and table.n["dice"][stomach] == 0
    assert table.overall["dice"] == pytest.approx(0.625)  # n/a organs leave the mean alone
    assert result.settings["nsd_tolerance_mm"]["6"] == 5.0  # FLARE22 liver tolerance by default
    console = Console(record=True, width=80)  # 13 organ columns do not fit 80 characters: transposed
    print_table(result, console)
    lines = console.export_text().splitlines()
    assert "Organ" in lines[2] and "Dice (%)" in lines[2]
    stomach_row = [[c.strip() for c in ln.split("│")[2:5]] for ln in lines if ln.startswith("│ stomach")]
    assert stomach_row == [["n/a", "n/a", "n/a"]]
    assert any(ln.startswith("│ Mean") and "62.50" in ln for ln in lines)
    samed = evaluate(pred, gt, EvaluationOptions(label_map="btcv", absent="samed", organs=[1, 6, 7])).table()
    # SAMed: missed liver -> (0, 0); stomach absent from both -> (0, 0), counted in the means
    assert samed.mean["dice"] == pytest.approx([0.75, 0.5, 0.0])
    assert samed.mean["hd95"] == pytest.approx([3.0, 0.0, 0.0])


def test_output_refused_without_force_and_atomic_on_failure(tmp_path: Path) -> None:
    pred, gt = make_folders(tmp_path)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        evaluate(pred, gt, EvaluationOptions(label_map="btcv"), out_dir=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # second case on another grid: the error names the file and nothing is written
    other = Geometry((10, 10, 12), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_labels(_labels((2, 6), False), other, pred / "0002.nii.gz", force=True)
    with pytest.raises(InputError, match=r"0002\.nii\.gz: labels do not cover the same physical voxels"):
        evaluate(pred, gt, EvaluationOptions(label_map="btcv"), out_dir=out, force=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "gt", "pred"]  # no temporary left
    write_labels(_labels((2, 6), False), GEOM, pred / "0002.nii.gz", force=True)
    evaluate(pred, gt, EvaluationOptions(label_map="btcv", overlays=False), out_dir=out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json", "report.md"]


def test_prediction_stored_flipped_is_paired_by_geometry(tmp_path: Path) -> None:
    gt_path, pred_path = tmp_path / "gt.nii.gz", tmp_path / "pred.nii.gz"
    labels = _labels((2, 6), True)
    write_labels(labels, GEOM, gt_path)
    # Same physical voxels stored with the y axis flipped: origin moves to the last row.
    flipped = Geometry((10, 10, 12), (1.0, 1.0, 3.0), (0.0, 9.0, 0.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))
    write_labels(labels[:, ::-1, :], flipped, pred_path)
    result = evaluate(pred_path, gt_path, EvaluationOptions(label_map="btcv", organs=[1, 6]))
    assert [r.dice for r in result.rows] == [1.0, 1.0]
    # paired by index instead, the flipped array would not match
    assert not np.array_equal(read_labels(pred_path).array, read_labels(gt_path).array)


def test_label_ids_outside_the_map_and_organ_subsets(tmp_path: Path) -> None:
    gt_path, pred_path = tmp_path / "gt.nii.gz", tmp_path / "pred.nii.gz"
    labels = _labels((2, 6), True)
    labels[0, 0, 0] = 12  # right adrenal gland
    labels[0, 0, 1] = 13  # left adrenal gland
    write_labels(labels, GEOM, gt_path)
    pred = labels.copy()
    pred[0, 0, 1] = 12  # left adrenal called right: per organ wrong, merged class right
    write_labels(pred, GEOM, pred_path)
    table1 = evaluate(pred_path, gt_path, EvaluationOptions(label_map="btcv", organs="btcv-table1"))
    assert table1.organ_names[-1] == "adrenal glands" and len(table1.organ_names) == 12
    assert table1.table().mean["dice"][-1] == 1.0
    per_organ = evaluate(pred_path, gt_path, EvaluationOptions(label_map="btcv", organs=[12, 13])).table().mean["dice"]
    assert per_organ == pytest.approx([2 * 1 / 3, 0.0])
    paper8 = evaluate(pred_path, gt_path, EvaluationOptions(label_map="btcv", organs="paper-8"))
    assert paper8.organ_names == ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach",
                                  "aorta", "pancreas"]
    assert paper8.table().mean["dice"][0] == 1.0 and paper8.table().mean["dice"][4] == 1.0
    with pytest.raises(InputError, match="organ '14' is not in label map 'btcv'"):
        evaluate(pred_path, gt_path, EvaluationOptions(label_map="btcv", organs=["14"]))
    bad = labels.copy()
    bad[0, 0, 2] = 14
    write_labels(bad, GEOM, pred_path, force=True)
    with pytest.raises(InputError, match=r"pred\.nii\.gz: label ids \[14\] are not in label map 'btcv'"):
        evaluate(pred_path, gt_path, EvaluationOptions(label_map="btcv"))


def test_shared_ct_against_itself_and_shifted(ct3mm: dict[str, Path], tmp_path: Path) -> None:
    gt = read_labels(ct3mm["labels"])
    present = [int(i) for i in np.unique(gt.array) if i != 0]
    same = evaluate(ct3mm["labels"], ct3mm["labels"], EvaluationOptions(label_map="btcv"))
    for r in same.rows:
        if r.organ_id in present:
            assert (r.dice, r.hd95, r.nsd) == (1.0, 0.0, 1.0)
        else:
            assert math.isnan(r.dice) and r.gt_voxels == 0
    # Shift one voxel (3 mm) along z: every surface voxel moves exactly 3 mm, so all surface
    # distances are 0 or 3 mm -> NSD at 3 mm is exactly 1, HD95 is 0 or 3 mm (3 for big organs).
    shifted = np.zeros_like(gt.array)
    shifted[1:] = gt.array[:-1]
    write_labels(shifted, gt.geometry, tmp_path / "shifted.nii.gz")
    big = ["spleen", "right kidney", "left kidney", "liver"]
    for tol, full, organs in ((3.0, True, present), (2.9, False, big)):
        result = evaluate(tmp_path / "shifted.nii.gz", ct3mm["labels"], EvaluationOptions(label_map="btcv", nsd_tolerance_mm=tol, organs=organs))
        assert len(result.rows) == len(organs)
        for r in result.rows:
            a, b = gt.array == r.organ_id, shifted == r.organ_id
            assert r.dice == pytest.approx(2 * np.count_nonzero(a & b) / (a.sum() + b.sum()))
            assert r.dice < 1.0
            assert r.hd95 in (0.0, pytest.approx(3.0))
            if r.organ in big:
                assert r.hd95 == pytest.approx(3.0)
                assert (r.nsd == 1.0) if full else (r.nsd < 1.0)
            elif full:
                assert r.nsd == pytest.approx(1.0)


def test_jobs_give_the_same_result_and_files(tmp_path: Path) -> None:
    pred, gt = make_folders(tmp_path)
    write_labels(_labels((3, 7), True), GEOM, gt / "label0003.nii.gz")
    write_labels(_labels(None, True), GEOM, pred / "0003.nii.gz")
    serial = evaluate(pred, gt, EvaluationOptions(label_map="btcv", jobs=1), out_dir=tmp_path / "one")
    parallel = evaluate(pred, gt, EvaluationOptions(label_map="btcv", jobs=2), out_dir=tmp_path / "two")
    assert repr(parallel.rows) == repr(serial.rows) and len(serial.rows) == 3 * 13  # repr: NaN == NaN
    assert parallel.overlays == serial.overlays
    for name in ("metrics.csv", "report.md"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    for png in serial.overlays.values():
        assert (tmp_path / "two" / png).read_bytes() == (tmp_path / "one" / png).read_bytes()
    # a worker's input error reaches the caller as the same one-line InputError
    other = Geometry((10, 10, 12), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_labels(_labels((2, 6), False), other, pred / "0002.nii.gz", force=True)
    with pytest.raises(InputError, match=r"0002\.nii\.gz: labels do not cover the same physical voxels"):
        evaluate(pred, gt, EvaluationOptions(label_map="btcv", jobs=2))
    with pytest.raises(InputError, match="--jobs"):
        evaluate(pred, gt, EvaluationOptions(label_map="btcv", jobs=0))
