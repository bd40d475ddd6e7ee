"""``--output-format nifti|dicom-seg|both`` on ``ragsam predict`` and ``ragsam segment``.

Round trips: the SEG written by a run, read back through highdicom onto the series, equals the
NIfTI written by the same run voxel for voxel, on the shared DICOM series stored head-first and
feet-first (``tests/dicom_series.py``). Models: the tiny random run of the predict tests and the
tiny SAM 2 / tiny-embedder bank of the segment tests.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_series import copy_series
from ragsam.cli.main import run_cli
from ragsam.data.dicom_seg import read_dicom_seg
from ragsam.data.slices import SliceSettings
from ragsam.data.volume import read_image, read_labels

ORDERS = ("head-first", "feet-first")


@pytest.fixture(scope="module")
def series(ct_dicom, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("series")
    return {order: copy_series(ct_dicom["image"], root / order, order) for order in ORDERS}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny SAM fine-tuned for one iteration on a phantom (random enough to label many organs)."""
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset

    root = tmp_path_factory.mktemp("run")
    write_phantom_dataset(root / "src", n_cases=1, shape=(4, 32, 32), seed=5)
    prepare_dataset(root / "src", root / "prep", PrepareOptions(SliceSettings(size=32), split="none"))
    assert run_cli(["train", "--config", "tiny", "--prepared", str(root / "prep"), "--out", str(root / "run"),
                    "model.image_size=32", "optim.max_iterations=1", "log.tensorboard=false", "device=cpu"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def bank(ct3mm, tmp_path_factory) -> Path:
    """A tiny-embedder bank over the shared 3 mm case (BTCV label map)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))
    from bank_fixtures import tiny_ct_bank

    return tiny_ct_bank(ct3mm, tmp_path_factory.mktemp("segbank"))


def _check_round_trip(seg: Path, nifti: Path, folder: Path) -> np.ndarray:
    image = read_image(folder)
    written = read_labels(nifti)
    assert written.geometry == image.geometry
    back = read_dicom_seg(seg, image)
    np.testing.assert_array_equal(back, written.array)
    assert pydicom.dcmread(seg, stop_before_pixels=True).ReferencedSeriesSequence[0].SeriesInstanceUID == \
        pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    return back


@pytest.mark.parametrize("order", ORDERS)
def test_predict_both_seg_equals_nifti(run, series, order, tmp_path, capsys):
    out = tmp_path / "pred" / "ct.nii.gz"
    argv = ["predict", str(run), str(series[order]), "-o", str(out), "--device", "cpu", "--output-format", "both"]
    assert run_cli(argv) == 0
    seg = tmp_path / "pred" / "ct.seg.dcm"
    assert capsys.readouterr().out.strip().startswith(f"{order}: {out} + {seg} (20 slices, organs ")
    back = _check_round_trip(seg, out, series[order])
    assert len(np.unique(back)) >= 3  # several organs: the comparison is not of empty volumes
    assert run_cli(argv) == 0  # the same inputs, run and format: done
    assert "already done, skipped" in capsys.readouterr().out
    seg.unlink()  # a missing companion: the case is redone
    assert run_cli(argv) == 0
    assert "already done" not in capsys.readouterr().out and seg.is_file()
    seg.write_bytes(b"someone else's SEG")
    assert run_cli(argv) == 2
    assert f"{seg}: already exists (use --force" in capsys.readouterr().err
    assert run_cli([*argv, "--force"]) == 0
    capsys.readouterr()
    _check_round_trip(seg, out, series[order])


def test_predict_dicom_seg_only_and_format_in_resume_key(run, series, tmp_path, capsys):
    folder = tmp_path / "pred"
    argv = ["predict", str(run), str(series["head-first"]), "-o", str(folder), "--device", "cpu"]
    assert run_cli([*argv, "--output-format", "dicom-seg"]) == 0
    assert capsys.readouterr().out.strip().startswith(f"head-first: {folder / 'head-first.seg.dcm'} (20 slices")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["head-first.seg.dcm"]
    assert run_cli(argv) == 0  # nifti now: another output, written
    assert "already done" not in capsys.readouterr().out
    seg = read_dicom_seg(folder / "head-first.seg.dcm", read_image(series["head-first"]))
    np.testing.assert_array_equal(seg, read_labels(folder / "head-first.nii.gz").array)


def test_segment_both_and_dicom_seg(bank, series, tmp_path, capsys):
    for order in ORDERS:
        out = tmp_path / order / "ct.nii.gz"
        argv = ["segment", str(series[order]), "-o", str(out), "--index", str(bank), "--sam2", "tiny", "--k", "2",
                "--output-format", "both"]
        assert run_cli(argv) == 0
        seg = out.with_name("ct.seg.dcm")
        assert f"{out} + {seg}: 20 slices" in capsys.readouterr().out
        back = _check_round_trip(seg, out, series[order])
        assert len(np.unique(back)) >= 2
        assert run_cli(argv) == 0
        assert "already done" in capsys.readouterr().out
    only = tmp_path / "only.seg.dcm"
    assert run_cli(["segment", str(series["head-first"]), "-o", str(only), "--index", str(bank), "--sam2", "tiny",
                    "--k", "2", "--output-format", "dicom-seg"]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(read_dicom_seg(only, read_image(series["head-first"])),
                                  read_labels(tmp_path / "head-first" / "ct.nii.gz").array)


def test_seg_refusals_come_before_any_model_work(run, bank, series, ct3mm, ct_dicom, tmp_path, capsys, monkeypatch):
    import importlib

    from ragsam.retrieval.segment import RagSegmenter

    predict_module = importlib.import_module("ragsam.inference.predict")  # the package exports the function

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(predict_module, "load_run", no_model)
    monkeypatch.setattr(RagSegmenter, "__init__", no_model)
    out = tmp_path / "out"
    cases = [
        (ct3mm["image"], "dicom-seg", "is not a DICOM series folder: --output-format dicom-seg writes a DICOM SEG"),
        (ct3mm["image"], "both", "is not a DICOM series folder: --output-format both"),
        (ct_dicom["image"], "both", "have no StudyInstanceUID (anonymised?)"),  # the shared series as stored
        (series["head-first"], "dicom", "output format must be one of nifti, dicom-seg, both, got 'dicom'"),
    ]
    for source, fmt, message in cases:
        for argv in (["predict", str(run), str(source), "-o", str(out), "--device", "cpu"],
                     ["segment", str(source), "-o", str(out), "--index", str(bank), "--sam2", "tiny"]):
            assert run_cli([*argv, "--output-format", fmt]) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("ragsam: error: ") and err.strip().count("\n") == 0 and message in err, err
            assert not out.exists()


def _predict_both(run: str, src: str, out: str) -> list[tuple[str, str, str]]:
    from ragsam.inference import PredictOptions, predict

    options = PredictOptions(device="cpu", output_format="both")
    return [(r.case_id, r.path.name, r.seg.name) for r in predict(run, src, out, options)]


def test_two_ranks_write_their_cases_segs(run, series, tmp_path):
    """torchrun: rank r writes the NIfTI and the SEG of its cases; every file equals one process's labels."""
    from two_ranks import run_ranks

    src = tmp_path / "cases"
    for order, folder in series.items():  # a dataset folder of two DICOM cases
        copy_series(folder, src / order / "dicom", order)
    expected = [("feet-first", "feet-first.nii.gz", "feet-first.seg.dcm"),
                ("head-first", "head-first.nii.gz", "head-first.seg.dcm")]
    assert _predict_both(str(run), str(src), str(tmp_path / "one")) == expected
    results = run_ranks(_predict_both, str(run), str(src), str(tmp_path / "two"), deadline_s=600)
    assert results == {0: ("ok", expected), 1: ("ok", expected)}
    for case, nifti, seg in expected:
        two = tmp_path / "two"
        assert (two / nifti).read_bytes() == (tmp_path / "one" / nifti).read_bytes()
        _check_round_trip(two / seg, two / nifti, src / case / "dicom")
        side = json.loads((two / f".{nifti}.ragsam.json").read_text())
        assert side["companions"] == {seg: hashlib.sha1((two / seg).read_bytes()).hexdigest()}


def test_help_names_the_formats(capsys):
    for command in ("predict", "segment"):
        assert run_cli([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--output-format" in text and "dicom-seg" in text and "Example:" in text
