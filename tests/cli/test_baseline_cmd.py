"""``ragsam baseline`` on the command line: success, refusals with exit code 2 and one line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from ragsam.cli.main import run_cli


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ragsam.data.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "raw", n_cases=2, layout="btcv", seed=1,
                                 shape=(6, 32, 32), spacing_mm=(5.0, 4.0, 4.0))


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_unknown_prompt_kind_is_refused(phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(["baseline", str(phantoms), "-o", str(tmp_path / "out"), "--prompt", "lasso",
                    "--weights", "random", "--arch", "tiny"])
    assert code == 2
    assert _error_line(capsys) == "ragsam: error: unknown prompt kind 'lasso' (choose from point1, point3, box)"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--box-iou", "1.5"], "box IoU must be in (0, 1], got 1.5"),
    (["--seed", "-3"], "seed must be >= 0, got -3"),
    (["--arch", "sam_vit_q"], "unknown architecture 'sam_vit_q'"),
    (["--weights", "missing/ckpt.pth"], "missing/ckpt.pth: weights file or folder does not exist"),
    (["--window", "-125"], "--window must be LOW,HIGH in HU, got '-125'"),
])
def test_bad_options_exit_2(phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                            message: str) -> None:
    argv = ["baseline", str(phantoms), "-o", str(tmp_path / "out"), "--prompt", "box", "--weights", "random",
            "--arch", "tiny", *args]
    assert run_cli(argv) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_image_without_ground_truth_is_refused(phantoms: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    image = phantoms / "img" / "img0001.nii.gz"
    assert run_cli(["baseline", str(image), "-o", str(tmp_path / "out"), "--prompt", "box",
                    "--weights", "random", "--arch", "tiny"]) == 2
    assert "no case with ground-truth labels found" in _error_line(capsys)


def test_baseline_runs_and_refuses_to_overwrite(phantoms: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    out = tmp_path / "out"
    argv = ["baseline", str(phantoms), "-o", str(out), "--prompt", "point1", "--weights", "random",
            "--arch", "tiny", "--size", "32", "--organs", "1,6", "--no-overlays", "--device", "cpu"]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "2 case(s)" in printed and "(point1)" in printed
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["0001.nii.gz", "0002.nii.gz"]
    with (out / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["case_id"], r["organ_id"]) for r in rows] == [("0001", "1"), ("0001", "6"), ("0002", "1"),
                                                             ("0002", "6")]
    assert not (out / "overlays").exists()
    before = (out / "metrics.csv").read_bytes()
    assert run_cli(argv) == 2
    assert _error_line(capsys) == f"ragsam: error: {out}: already exists (use --force to overwrite)"
    assert (out / "metrics.csv").read_bytes() == before
    assert run_cli([*argv, "--force", "--prompt", "box"]) == 0
    assert (out / "baseline.json").read_text().count('"prompt": "box"') == 1
