"""A whole plan end to end on tiny models and the shared CT: run, skip, resume, tables, figures."""

from __future__ import annotations

import json

import pytest

from ragsam.cli.main import run_cli
from ragsam.experiments.runner import ExperimentSettings, run_experiment
from ragsam.hub.tiny_models import tiny_models


@pytest.fixture(scope="module")
def rank_plan(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("exp") / "rank"
    settings = ExperimentSettings(data=str(shared_data), tiny=True, size=32, iterations=4, device="cpu")
    logs: list[str] = []
    results = run_experiment("paper-flare-rank", settings, out, log=logs.append)
    return out, settings, results, logs


def test_plan_writes_table_beside_the_paper_and_figures(rank_plan):
    out, _, results, _ = rank_plan
    assert list(results) == ["rank 1", "rank 4", "rank 16"]
    lines = (out / "table.md").read_text().splitlines()
    rows = [line.split(" | ")[:2] for line in lines if line.startswith("| rank")]
    assert rows == [["| rank 1", "ours"], ["| rank 1", "paper"], ["| rank 4", "ours"], ["| rank 4", "paper"],
                    ["| rank 16", "ours"], ["| rank 16", "paper"]]
    assert "| rank 4 | paper | 0.948 |" in (out / "table.md").read_text()
    # Trainable parameters grow with the LoRA rank by the per-rank cost of q and v LoRA.
    params = [results[n].trainable_parameters for n in ("rank 1", "rank 4", "rank 16")]
    assert params[0] < params[1] < params[2]
    assert (params[2] - params[1]) == 4 * (params[1] - params[0])
    assert (out / "figures" / "dice_vs_x.png").stat().st_size > 1000
    test_case = json.loads((out / "prepared" / "splits.json").read_text())["test"][0]
    assert (out / "figures" / f"{test_case}.png").is_file()
    from ragsam.training import load_train_config

    for name in ("rank-1", "rank-4", "rank-16"):
        # the tiny run keeps the samed preset's recipe on the tiny model
        cfg = load_train_config(out / "variants" / name / "run" / "config.yaml")
        assert (cfg.model.arch, cfg.model.normalize, cfg.optim.loss_resolution) == ("tiny", "none", "low")
        assert cfg.model.peft.train_prompt_encoder and cfg.model.peft.rank == int(name.split("-")[1])
        done = json.loads((out / "variants" / name / "done.json").read_text())
        assert done["trainable_mib"] == pytest.approx(done["trainable_parameters"] * 4 / 2**20)
        assert set(done["dice"]) >= {"liver", "spleen"}
        assert (out / "variants" / name / "evaluation" / "metrics.csv").is_file()


def test_rerun_skips_finished_and_resumes_interrupted(rank_plan):
    out, settings, results, _ = rank_plan
    variant = out / "variants" / "rank-16"
    (variant / "done.json").unlink()
    logs: list[str] = []
    again = run_experiment("paper-flare-rank", settings, out, log=logs.append)
    assert sum("finished earlier, skipped" in line for line in logs) == 2
    assert not any("training" in line for line in logs)  # the run itself was complete: only re-scored
    assert json.dumps(again["rank 16"].dice) == json.dumps(results["rank 16"].dice)  # NaN-safe equality
    # An interrupted training (checkpoint written, final weights not yet) resumes from its checkpoint.
    for name in ("done.json", "run/model.safetensors", "run/val.json"):
        (variant / name).unlink()
    logs.clear()
    resumed = run_experiment("paper-flare-rank", settings, out, log=logs.append)
    assert any(line.startswith("rank 16: resuming") for line in logs)
    assert (variant / "run" / "model.safetensors").is_file()
    assert resumed["rank 16"].trainable_parameters == results["rank 16"].trainable_parameters


def test_changed_settings_are_refused(rank_plan, capsys):
    out, settings, _, _ = rank_plan
    code = run_cli(["experiment", "paper-flare-rank", "--tiny", "--data", settings.data, "--out", str(out),
                    "--size", "48", "--iterations", "4"])
    assert code == 2
    assert "another plan or other settings" in capsys.readouterr().err


def test_dry_run_lists_done_and_todo(rank_plan, capsys):
    out, _, _, _ = rank_plan
    assert run_cli(["experiment", "paper-flare-rank", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("[done]") == 3
    assert run_cli(["experiment", "paper-btcv", "--dry-run", "--out", str(out / "none")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("[todo]") == 9
    assert "train --config samed_s (sam_vit_b 512 px" in text and "train --config medsa (sam_vit_h 1024 px" in text
    assert "prompt encoder trained (positional matrix frozen)" in text
    assert "z-prior 0)" in text and "[ours, not in the paper]" in text


def test_plan_with_every_kind_of_variant(tmp_path, shared_data):
    """Fine-tuning, retrieval fused with it (SAMed + RAG), and a prompted baseline in one table."""
    plan = tmp_path / "mixed.yaml"
    plan.write_text(
        "name: mixed\ntitle: One of each kind\ndataset: flare22\norgans: paper-8\npaper_table: paper-flare-rag\n"
        "variants:\n"
        "  - {name: without RAG, overrides: [model.peft.rank=4], paper_row: without RAG}\n"
        "  - {name: with RAG, kind: rag, base: without RAG, paper_row: with RAG}\n"
        "  - {name: SAM box, kind: baseline, prompt: box}\n")
    settings = ExperimentSettings(data=str(shared_data), tiny=True, size=32, iterations=2, device="cpu", k=2)
    out = tmp_path / "out"
    results = run_experiment(str(plan), settings, out, log=lambda _: None)
    assert set(results) == {"without RAG", "with RAG", "SAM box"}
    # The fused variant reports the fine-tuned model's trainable parameters (retrieval adds none).
    assert results["with RAG"].trainable_parameters == results["without RAG"].trainable_parameters
    assert results["SAM box"].trainable_parameters is None
    table = (out / "table.md").read_text()
    for row in ("| without RAG | ours |", "| with RAG | ours |", "| with RAG | paper | 0.945 |",
                "| SAM box | ours (not in the paper) |"):
        assert row in table
    # Every prediction lies on the test image's own grid.
    from ragsam.data.volume import read_image, read_labels

    test_case = json.loads((out / "prepared" / "splits.json").read_text())["test"][0]
    image = json.loads((out / "prepared" / "prepare.json").read_text())["cases"][test_case]["image"]
    geometry = read_image(image).geometry
    for name in ("without-rag", "with-rag", "sam-box"):
        pred = read_labels(out / "variants" / name / "predictions" / f"{test_case}.nii.gz")
        assert pred.geometry.size == geometry.size
        assert set(int(v) for v in pred.array.ravel()[::97]) <= set(range(9))


def test_tiny_plan_without_data_runs_on_a_phantom(tmp_path, monkeypatch, capsys):
    """``experiment --tiny`` needs no dataset: it writes a phantom into OUT/data (never a folder outside the project).

    The plan's own running is covered above; here the runner is stubbed to record what it got.
    """
    from ragsam.cli.main import run_cli
    from ragsam.data.layouts import discover_cases
    from ragsam.experiments import runner

    seen = {}

    def fake_run(self, force=False):
        seen["data"] = self.settings.data
        (self.out / "table.md").write_text("table")
        return {}

    monkeypatch.setattr(runner.ExperimentRunner, "run", fake_run)
    monkeypatch.chdir(tmp_path)  # nothing in the working folder to find
    out = tmp_path / "out"
    code = run_cli(["experiment", "paper-flare-rank", "--tiny", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert seen["data"] == str(out / "data")
    assert [c.case_id for c in discover_cases(out / "data")] == ["0001", "0002", "0003", "0004"]
    # Without --tiny a dataset stays required.
    capsys.readouterr()
    assert run_cli(["experiment", "paper-flare-rank", "--out", str(tmp_path / "o2")]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_retrieval_variants_training_free_and_fine_tuned(tmp_path):
    """A ``retrieval`` variant with a train-rag preset fine-tunes SAM 2 on the bank first; without, it does not.

    On the tiny phantom (3 training cases): episodes need a training case other than the query's in the bank.
    """
    from ragsam.experiments.runner import tiny_phantom_data

    plan = tmp_path / "retrieval.yaml"
    plan.write_text(
        "name: retrieval\ntitle: RAG with and without episodic fine-tuning\ndataset: flare22\norgans: paper-8\n"
        "paper_table: paper-flare-rag\nvariants:\n"
        "  - {name: free, kind: retrieval}\n"
        "  - {name: tuned, kind: retrieval, preset: rag_tiny}\n")
    data = tiny_phantom_data(tmp_path)
    settings = ExperimentSettings(data=str(data), tiny=True, size=32, iterations=2, device="cpu", k=1)
    out = tmp_path / "out"
    results = run_experiment(str(plan), settings, out, log=lambda _: None)
    assert results["free"].trainable_parameters is None
    run = out / "variants" / "tuned" / "run"
    assert results["tuned"].trainable_parameters and (run / "model.safetensors").is_file()
    from ragsam.training.rag_model import read_rag_run_config

    cfg = read_rag_run_config(run)
    assert (cfg.data.k, cfg.model.weights, cfg.optim.max_iterations) == (1, str(tiny_models().sam2), 2)
    assert cfg.data.bank == str(out / "bank") and cfg.model.num_classes == 8  # paper-8 organs
    for name in ("free", "tuned"):
        assert len(list((out / "variants" / name / "predictions").glob("*.nii.gz"))) == 1
