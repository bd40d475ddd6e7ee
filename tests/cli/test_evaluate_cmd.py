"""``ragsam evaluate``: numbers in metrics.csv, one-line refusals with exit code 2."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ragsam.cli.main import run_cli
from ragsam.data.geometry import Geometry
from ragsam.data.volume import write_labels

SHAPE = (12, 10, 10)  # (z, y, x)
GEOM = Geometry((10, 10, 12), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _cube(z0: int) -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    a[z0:z0 + 4, 2:6, 2:6] = 1  # BTCV 1 spleen
    a[8:11, 6:9, 5:9] = 6  # BTCV 6 liver
    return a


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Case a: spleen shifted by 2 slices of 3 mm; case b: identical."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_labels(_cube(2), GEOM, gt / "a_gt.nii.gz")
    write_labels(_cube(2), GEOM, gt / "b_gt.nii.gz")
    write_labels(_cube(4), GEOM, pred / "a_pred.nii.gz")
    write_labels(_cube(2), GEOM, pred / "b_pred.nii.gz")
    return pred, gt


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ragsam: error: "), err
    return err[0]


def test_evaluate_writes_expected_numbers(folders: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = folders
    out = tmp_path / "eval"
    code = run_cli(["evaluate", "--pred", str(pred), "--gt", str(gt), "--organs", "1,6", "--out", str(out),
                    "--nsd-tolerance", "1.0", "--no-overlays"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Dice (%)" in printed and "87.50" in printed  # mean Dice: spleen (50+100)/2, liver 100
    with open(out / "metrics.csv", newline="") as fh:
        rows = {(r["case_id"], r["organ"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {("a", "spleen"), ("a", "liver"), ("b", "spleen"), ("b", "liver")}
    a = rows[("a", "spleen")]
    assert (float(a["dice"]), float(a["hd95_mm"]), float(a["nsd"])) == (0.5, 6.0, 0.5)
    assert (a["gt_voxels"], a["pred_voxels"], a["nsd_tolerance_mm"]) == ("64", "64", "1.0")
    assert float(rows[("b", "spleen")]["dice"]) == 1.0 and float(rows[("a", "liver")]["hd95_mm"]) == 0.0
    assert not (out / "overlays").exists()


def test_unmatched_cases_exit_2(folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = folders
    (pred / "b_pred.nii.gz").unlink()
    assert run_cli(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert "cases do not match the ground truth: no prediction for 'b'" in _one_error_line(capsys)


def test_existing_out_without_force_exit_2(folders: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = folders
    out = tmp_path / "eval"
    out.mkdir()
    (out / "old.csv").write_text("keep me")
    assert run_cli(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 2
    assert "already exists (use --force to overwrite)" in _one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["old.csv"] and (out / "old.csv").read_text() == "keep me"
    images = tmp_path / "images"
    images.mkdir()
    for cid in ("a", "b"):  # nnU-Net style image names: <case>_0000
        ct = sitk.GetImageFromArray(np.full(SHAPE, 40.0, np.float32))
        GEOM.apply_to(ct)
        sitk.WriteImage(ct, str(images / f"{cid}_0000.nii.gz"))
    assert run_cli(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--force",
                    "--organs", "spleen", "--images", str(images)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json", "overlays", "report.md"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png"]


def test_mismatched_geometry_exit_2(folders: tuple[Path, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = folders
    moved = Geometry((10, 10, 12), (1.0, 1.0, 3.0), (0.0, 5.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_labels(_cube(2), moved, pred / "b_pred.nii.gz", force=True)
    out = tmp_path / "eval"
    assert run_cli(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "b_pred.nii.gz: labels do not cover the same physical voxels" in line and "origin" in line
    assert not out.exists()


def test_bad_options_exit_2(folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = folders
    assert run_cli(["evaluate", "--pred", str(pred), "--gt", str(gt), "--absent", "lenient"]) == 2
    assert "'lenient'" in _one_error_line(capsys)
    assert run_cli(["evaluate", "--pred", str(pred), "--gt", str(gt), "--nsd-tolerance", "wide"]) == 2
    assert "'wide'" in _one_error_line(capsys)
    assert run_cli(["evaluate", "--pred", str(pred), "--gt", str(gt), "--labels", "nolabels"]) == 2
    assert "not a built-in label map" in _one_error_line(capsys)
