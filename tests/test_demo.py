"""``ragsam demo``: the quick budget end to end, refusals, weight detection, report wording."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ragsam.cli.main import run_cli
from ragsam.demo.budget import BUDGETS, DemoBudget
from ragsam.demo.report import dice_table, fmt_dice, weights_statement
from ragsam.demo.run import run_demo
from ragsam.demo.summary import MethodScore
from ragsam.errors import InputError, OutputExistsError
from ragsam.hub.detect import WeightsUsed

# Measured on the quick budget with the shipped tiny models (seed 0, 1 thread, 2026-12-02, tiny SAM 2
# pre-trained with the memory-reading initialisation): mean Dice fine-tuned 0.655, RAG 0.656, hybrid
# 0.678, trained RAG 0.729; liver 0.88 / 0.89 / 0.91 / 0.90 (seed 1: 0.592 / 0.577 / 0.614 / 0.585).
# The tiny SAM 2 without that initialisation gave RAG 0.065 and trained RAG 0.103: the RAG floors fail
# if retrieval stops transferring masks. Trained RAG beats training-free RAG by 7.3 points on seed 0.
# With train-rag's object-score loss (2026-12-06, seed 0): trained RAG 0.742, the other rows unchanged;
# under tools/cpu-isa.sh avx2 0.651 / 0.656 / 0.677 / 0.742 (docs/testing.md).
MEAN_FLOORS = {"finetuned": 0.45, "rag": 0.45, "hybrid": 0.45, "rag-trained": 0.45}
LIVER_FLOORS = {"finetuned": 0.6, "rag": 0.6, "hybrid": 0.6, "rag-trained": 0.6}
LIVER_ID = 6


def _dice(pred: np.ndarray, gt: np.ndarray, organ: int) -> float:
    p, g = pred == organ, gt == organ
    total = int(p.sum() + g.sum())
    return float("nan") if total == 0 else 2.0 * int((p & g).sum()) / total


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    code = run_cli(["demo", "--quick", "--out", str(out)])
    return code, out


def test_quick_demo_writes_everything_and_learns_the_liver(quick_demo: tuple[int, Path]) -> None:
    import SimpleITK as sitk

    code, out = quick_demo
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "phantom"
    (case,) = summary["test_cases"]
    assert case not in summary["train_cases"]
    methods = {m["method"]: m for m in summary["methods"]}
    assert set(methods) == {"finetuned", "rag", "hybrid", "rag-trained"}
    report = (out / "report.md").read_text()
    assert "say nothing about the accuracy" in report and "tiny SAM" in report
    for name, m in methods.items():
        pred_file = out / "predictions" / name / f"{case}.nii.gz"
        assert (out / m["overlays"][case]).is_file()
        assert f"({m['overlays'][case]})" in report
        # the Dice in the summary is the Dice of the written files, recomputed here by hand
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_file)))
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ground_truth" / f"{case}.nii.gz")))
        assert pred.shape == gt.shape
        assert math.isclose(m["organ_dice"]["liver"], _dice(pred, gt, LIVER_ID), abs_tol=1e-9)
    for name, floor in MEAN_FLOORS.items():
        assert methods[name]["mean_dice"] > floor, name
        assert methods[name]["organ_dice"]["liver"] > LIVER_FLOORS[name], name
    # episodic fine-tuning of SAM 2 on the training cases helps retrieval on the held-out case
    assert methods["rag-trained"]["mean_dice"] > methods["rag"]["mean_dice"]
    assert (out / "rag_run" / "model.safetensors").is_file() and "--sam2-run rag_run" in report
    # the reusable pieces are where the report says
    assert (out / "run" / "model.safetensors").is_file() and (out / "bank" / "bank.json").is_file()


def test_existing_output_is_refused_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo-output"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_cli(["demo", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and "--force" in err[0]
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with pytest.raises(OutputExistsError):
        run_demo(out_dir=out, budget="quick")


def test_bad_inputs_are_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-data"
    assert run_cli(["demo", "--data", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
    with pytest.raises(InputError, match="unknown demo budget 'huge'"):
        run_demo(out_dir=tmp_path / "o", budget="huge")
    with pytest.raises(InputError, match="multiple of 16"):
        run_demo(out_dir=tmp_path / "o", budget=DemoBudget(size=72))
    with pytest.raises(InputError, match="iterations must be >= 1"):
        run_demo(out_dir=tmp_path / "o", budget="quick", iterations=0)
    assert not (tmp_path / "o").exists()


def test_report_wording_and_table() -> None:
    tiny = WeightsUsed("tiny", "random", "tiny SAM", "tiny", "tiny SAM 2", "tiny", "tiny DINOv2",
                       {"sam": False, "sam2": False, "embedder": True})
    text = weights_statement(tiny)
    assert "say nothing about the accuracy of the method on CT" in text and "synthetic phantoms" in text
    assert "sam, sam2" in text and "embedder," not in text
    real = WeightsUsed("sam_vit_b", "/w/sam", "SAM ViT-B", "/w/s2", "SAM 2.1", "/w/d", "DINOv2",
                       {"sam": True, "sam2": True, "embedder": True})
    assert "say nothing" not in weights_statement(real) and "pretrained weights" in weights_statement(real)
    assert (fmt_dice(0.5), fmt_dice(0.12345), fmt_dice(float("nan"))) == ("50.0", "12.3", "n/a")
    scores = [MethodScore("finetuned", 0.25, {"liver": 0.5, "spleen": 0.0}, "p", "e"),
              MethodScore("rag", float("nan"), {"liver": float("nan"), "spleen": float("nan")}, "p", "e")]
    header, rows = dice_table(scores)
    assert header == ["Method", "liver", "spleen", "Mean"]
    assert rows == [["Fine-tuned SAM", "50.0", "0.0", "25.0"],
                    ["RAG (retrieval + SAM 2 memory, no training)", "n/a", "n/a", "n/a"]]
    assert BUDGETS["quick"].cases < BUDGETS["standard"].cases
