"""``ragsam segment`` command line (thin wrapper over segment_volume)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ragsam.cli.main import run_cli


@pytest.fixture(scope="module")
def bank(ct3mm, tmp_path_factory):
    """A tiny-embedder bank over the shared 3 mm case, built through `ragsam index build`'s API."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))
    from bank_fixtures import tiny_ct_bank

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bank = tiny_ct_bank(ct3mm, tmp_path_factory.mktemp("segcli"))
    yield bank
    torch.set_num_threads(threads)


def test_segment_writes_output_and_refuses_overwrite(bank, ct3mm, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    argv = ["segment", str(ct3mm["image"]), "-o", str(out), "--index", str(bank), "--sam2", "tiny", "--k", "2",
            "--json"]
    assert run_cli(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["slices"] == 30 and summary["k"] == 2 and summary["output"] == str(out)
    written = sitk.ReadImage(str(out))
    assert written.GetSize() == (122, 101, 30)
    assert sorted(set(np.unique(sitk.GetArrayFromImage(written)).tolist()) - {0}) == summary["organs"]
    before = out.read_bytes()
    assert run_cli(argv) == 0  # the same input and settings: already done, skipped
    assert json.loads(capsys.readouterr().out)["skipped"] is True and out.read_bytes() == before
    out.write_bytes(before[:-1] + b"x")  # changed by someone else: no longer ragsam's own output
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "already exists (use --force" in err
    assert out.read_bytes() == before[:-1] + b"x"


def test_segment_bad_inputs_are_one_line_exit_2(bank, ct3mm, tmp_path, capsys):
    out = str(tmp_path / "o.nii.gz")
    assert run_cli(["segment", str(ct3mm["image"]), "-o", out, "--index", str(bank), "--sam2", "tiny",
                    "--k", "500"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ragsam: error: ") and "k=500" in err and err.strip().count("\n") == 0
    assert run_cli(["segment", str(ct3mm["labels"]), "-o", out, "--index", str(bank), "--sam2", "tiny"]) == 2
    assert "do not look like CT in HU" in capsys.readouterr().err
    assert run_cli(["segment", str(ct3mm["image"]), "-o", out, "--index", str(tmp_path), "--sam2", "tiny"]) == 2
    assert "not a support bank" in capsys.readouterr().err
    assert run_cli(["segment", str(ct3mm["image"]), "-o", out, "--index", str(bank),
                    "--sam2", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(["segment", str(ct3mm["image"]), "-o", out, "--index", str(bank), "--sam2", "tiny",
                    "--run", str(tmp_path)]) == 2
    assert "not a ragsam run folder" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_help_has_example(capsys):
    assert run_cli(["segment", "--help"]) == 0
    assert "Example: ragsam segment" in capsys.readouterr().out


def test_segment_dataset_folder_writes_one_file_per_case(bank, ct3mm, tmp_path, capsys):
    import shutil

    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("p1", "p2"):
        shutil.copy(ct3mm["image"], folder / f"{name}.nii.gz")
    out = tmp_path / "labels"
    assert run_cli(["segment", str(folder), "-o", str(out), "--index", str(bank), "--sam2", "tiny", "--k", "1",
                    "--json"]) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert [s["output"] for s in summaries] == [str(out / "p1.nii.gz"), str(out / "p2.nii.gz")]
    assert summaries[1]["support_slices_encoded"] == 0  # the second case reuses the first one's supports
    first, second = (sitk.GetArrayFromImage(sitk.ReadImage(s["output"])) for s in summaries)
    assert np.array_equal(first, second)
