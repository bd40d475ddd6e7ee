"""Experiment plans and the paper-layout tables."""

from __future__ import annotations

import math

import pytest

from ragsam.errors import InputError
from ragsam.experiments.plans import BUILTIN_PLANS, load_plan, variant_folder_name
from ragsam.experiments.tables import build_table, paper_tables, table_csv, table_markdown


def test_paper_values_are_the_published_ones():
    tables = paper_tables()["tables"]
    assert tables["paper-btcv"]["rows"]["SAMed"]["spleen"] == 0.974
    assert tables["paper-btcv"]["rows"]["Med-SA"]["mean"] == 0.889
    assert tables["paper-flare-rank"]["rows"]["rank 4"]["mean"] == 0.875
    assert tables["paper-flare-rag"]["rows"]["with RAG"]["pancreas"] == 0.742
    # Table 1's printed mean is the mean of its 12 organ columns (to rounding).
    samed = tables["paper-btcv"]["rows"]["SAMed"]
    organs = [v for k, v in samed.items() if k != "mean"]
    assert len(organs) == 12 and abs(sum(organs) / 12 - samed["mean"]) < 0.001


def test_builtin_plans_are_consistent():
    for name in BUILTIN_PLANS:
        plan = load_plan(name)
        published = paper_tables()["tables"][plan.paper_table]["rows"]
        assert all(v.paper_row in published for v in plan.variants if not v.ours), name
    assert [v.x for v in load_plan("paper-flare-rank").variants] == [1.0, 4.0, 16.0]
    assert variant_folder_name("SAM BBox 0.5") == "sam-bbox-0-5"


def test_plan_file_is_validated(tmp_path):
    bad = tmp_path / "plan.yaml"
    bad.write_text("name: x\ntitle: t\nvariants:\n  - {name: a, kind: rag, base: nope}\n")
    with pytest.raises(InputError, match="base 'nope' is not a finetune variant"):
        load_plan(str(bad))
    bad.write_text("name: x\ntitle: t\nvariants:\n  - {name: a}\n  - {name: a}\n")
    with pytest.raises(InputError, match="duplicate variant names"):
        load_plan(str(bad))
    good = tmp_path / "good.yaml"
    good.write_text("name: mine\ntitle: Mine\norgans: paper-8\nvariants:\n"
                    "  - {name: r2, overrides: ['model.peft.rank=2']}\n")
    plan = load_plan(str(good))
    assert plan.variants[0].overrides == ["model.peft.rank=2"]
    with pytest.raises(InputError, match="neither a built-in plan"):
        load_plan("paper-nothing")


def test_table_interleaves_ours_and_paper_and_computes_mean():
    plan = load_plan("paper-flare-rank")
    measured = {"rank 1": {"spleen": 0.5, "liver": 0.7, "aorta": math.nan}}
    table = build_table(plan, measured, {"rank 1": 147_456})
    assert table.columns[-1] == "mean" and table.columns[0] == "spleen"
    ours = table.rows[0]
    assert (ours.variant, ours.source) == ("rank 1", "ours")
    assert ours.values["mean"] == pytest.approx(0.6)  # NaN and unmeasured organs excluded
    paper = table.rows[1]
    assert paper.source == "paper" and paper.values["mean"] == pytest.approx(sum(
        [0.939, 0.850, 0.806, 0.855, 0.953, 0.858, 0.909, 0.698]) / 8)  # the organ average, 0.8585
    assert (paper.printed_mean, paper.mean_mismatch) == (0.859, False)
    assert [r.source for r in table.rows] == ["ours", "paper", "paper", "paper"]
    md = table_markdown(table)
    assert "| rank 1 | ours | 0.500 |" in md and "| 0.15M |" in md and "| 0.859 |" in md
    csv_text = table_csv(table)
    assert csv_text.splitlines()[1].startswith("rank 1,ours,0.5000,")


def test_figures_are_written(tmp_path):
    import numpy as np
    from PIL import Image

    from ragsam.experiments.figures import plot_dice_against_x, plot_variant_slices

    plan = load_plan("paper-flare-rank")
    table = build_table(plan, {"rank 1": {"spleen": 0.5}, "rank 4": {"spleen": 0.7}})
    png = plot_dice_against_x(table, {v.name: v.x for v in plan.variants}, "LoRA rank", tmp_path / "rank.png")
    assert Image.open(png).size[0] > 100
    gt = np.zeros((16, 16), dtype=np.uint8)
    gt[4:10, 4:10] = 1
    png2 = plot_variant_slices(np.full((16, 16), 0.5), gt, {"rank 4": gt}, {1: (1.0, 0.0, 0.0)}, {1: "spleen"},
                               "t", tmp_path / "slices.png")
    image = np.asarray(Image.open(png2).convert("RGB"))
    assert (image[..., 0] > 200).any() and ((image[..., 1] < 80) & (image[..., 0] > 200)).any()


def test_printed_means_that_are_not_the_organ_average_are_marked():
    plan = load_plan("paper-btcv")
    table = build_table(plan, {})
    marked = {r.variant for r in table.rows if r.mean_mismatch}
    # Table 1: SAM 3 points prints 0.631 for organs averaging 0.605, MedSAM 3 points 0.820 for 0.8045 ...
    assert marked == {"TransUNet", "SAM 3 points", "SAM BBox 0.5", "MedSAM 1 point", "MedSAM 3 points"}
    sam3 = next(r for r in table.rows if r.variant == "SAM 3 points")
    assert sam3.printed_mean == 0.631 and sam3.values["mean"] == pytest.approx(7.264 / 12)
    assert {"TransUNet", "nnUNet", "UNetr", "SegDiff"} <= {r.variant for r in table.rows}  # printed-only rows
    md = table_markdown(table)
    assert "| 0.631 * |" in md and "| 0.889 |" in md


def test_trainable_size_is_a_count_and_mib(tmp_path):
    import torch
    from safetensors.torch import save_file

    from ragsam.experiments.runner import trainable_size

    save_file({"a": torch.zeros(1024, 256), "b": torch.zeros(10, dtype=torch.bfloat16)},
              str(tmp_path / "model.safetensors"))
    count, mib = trainable_size(tmp_path)
    assert count == 1024 * 256 + 10 and mib == pytest.approx((1024 * 256 * 4 + 20) / 2**20)
    plan = load_plan("paper-flare-decoder")
    table = build_table(plan, {"SAMed": {"spleen": 0.9}}, {"SAMed": count}, {"SAMed": mib})
    md = table_markdown(table)
    assert "| 0.26M | 1.00 |" in md and "| 18.81M (printed) |" in md
    assert "printed_mean_is_not_organ_average" in table_csv(table).splitlines()[0]


def test_rag_finetune_plan_sets_training_free_against_fine_tuned_retrieval(capsys):
    from ragsam.cli.main import run_cli

    plan = load_plan("rag-finetune")
    kinds = {v.name: (v.kind, v.preset, v.ours) for v in plan.variants}
    assert kinds == {"without RAG": ("finetune", "samed", False), "with RAG": ("rag", None, False),
                     "RAG, training-free SAM 2": ("retrieval", None, True),
                     "RAG, fine-tuned SAM 2": ("retrieval", "rag_lora", True)}
    assert plan.paper_table == "paper-flare-rag"  # the same table and figure conventions as Table 4
    assert run_cli(["experiment", "rag-finetune", "--dry-run", "--out", "unused-rag-finetune"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "retrieval alone (k=4), SAM 2 training-free" in text
    assert "fine-tuned on episodes (train-rag --config rag_lora)" in text
