"""``ragsam phantom`` and ``ragsam prepare`` through the command line."""

from __future__ import annotations

import json

import numpy as np

from ragsam.cli.main import run_cli


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_phantom_then_prepare_then_reuse(tmp_path, capsys):
    src, out = tmp_path / "phantoms", tmp_path / "prepared"
    assert run_cli(["phantom", str(src), "--cases", "3", "--shape", "5,20,24", "--seed", "2"]) == 0
    assert sorted(p.name for p in (src / "img").iterdir()) == ["img0001.nii.gz", "img0002.nii.gz", "img0003.nii.gz"]
    capsys.readouterr()
    argv = ["prepare", str(src), "-o", str(out), "--size", "32", "--window=-100,200", "--split", "none"]
    assert run_cli(argv) == 0
    text = capsys.readouterr().out
    assert "3 cases, 15 slices (built 3, reused 0, removed 0)" in text
    assert "liver" in text and "spleen" in text
    meta = json.loads((out / "prepare.json").read_text())
    assert meta["settings"] == {"window": [-100.0, 200.0], "size": 32, "context": 0}
    assert json.loads((out / "splits.json").read_text()) == {"train": ["0001", "0002", "0003"], "test": []}
    assert np.load(out / "cases" / "0002" / "image.npy").shape == (5, 32, 32)
    assert run_cli(argv) == 0
    assert "(built 0, reused 3, removed 0)" in capsys.readouterr().out


def test_bad_source_is_one_line_exit_2(tmp_path, capsys):
    code = run_cli(["prepare", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    lines = _errors(capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ragsam: error:") and "missing" in lines[0]
    assert not (tmp_path / "out").exists()


def test_non_cache_output_needs_force(tmp_path, capsys):
    src, out = tmp_path / "phantoms", tmp_path / "busy"
    assert run_cli(["phantom", str(src), "--cases", "2", "--shape", "3,16,16"]) == 0
    out.mkdir()
    (out / "results.csv").write_text("x\n")
    capsys.readouterr()
    assert run_cli(["prepare", str(src), "-o", str(out), "--size", "16"]) == 2
    lines = _errors(capsys)
    assert len(lines) == 1 and "not a ragsam slice cache" in lines[0] and "--force" in lines[0]
    assert run_cli(["prepare", str(src), "-o", str(out), "--size", "16", "--force"]) == 0
    assert (out / "manifest.csv").is_file()


def test_bad_values_are_one_line_errors(tmp_path, capsys):
    assert run_cli(["phantom", str(tmp_path / "p"), "--shape", "3,16"]) == 2
    assert "'3,16'" in _errors(capsys)[0]
    assert run_cli(["prepare", str(tmp_path), "-o", str(tmp_path / "o"), "--window", "275,-125"]) == 2
    assert "window" in _errors(capsys)[0]
    assert run_cli(["phantom", str(tmp_path / "p"), "--cases", "1", "--shape", "3,16,16"]) == 0
    assert run_cli(["phantom", str(tmp_path / "p"), "--cases", "1"]) == 2  # exists, no --force
    assert "--force" in _errors(capsys)[0]


def test_output_inside_the_dataset_refused(tmp_path, capsys):
    src = tmp_path / "phantoms"
    assert run_cli(["phantom", str(src), "--cases", "1", "--shape", "3,16,16"]) == 0
    capsys.readouterr()
    assert run_cli(["prepare", str(src), "-o", str(src / "prepared"), "--size", "16"]) == 2
    assert "inside the dataset folder" in _errors(capsys)[0]
    assert not (src / "prepared").exists()
