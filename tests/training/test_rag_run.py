"""``ragsam train-rag`` end to end: run folder, exact resume, torchrun DDP, and `segment --sam2-run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from rag_fixtures import RUN_BASE, write_phantom_bank
from safetensors.torch import load_file

from ragsam.cli.main import run_cli
from ragsam.training.rag_config import load_rag_config
from ragsam.training.rag_run import train_rag

SHORT = ["data.train=['0001','0002']", "optim.max_iterations=4", "checkpoint_every=2", "optim.lr=0.002"]


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return write_phantom_bank(tmp_path_factory.mktemp("ragrun"))


def _cfg(bank, *extra):
    return load_rag_config("rag_tiny", [f"data.bank={bank}", *RUN_BASE, *extra])


def test_killed_and_resumed_run_equals_uninterrupted_and_holds_only_trained_tensors(bank, tmp_path):
    full = train_rag(_cfg(bank, *SHORT, "data.val=['0003']", "val.every=2"), tmp_path / "full")
    part = train_rag(_cfg(bank, *SHORT, "data.val=['0003']", "val.every=2"), tmp_path / "part", stop_after=2)
    assert not (part / "last.safetensors").exists()
    assert run_cli(["train-rag", "--out", str(part), "--resume"]) == 0
    a, b = load_file(full / "last.safetensors"), load_file(part / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in full.iterdir()) == ["checkpoints", "config.yaml", "last.safetensors", "log.csv",
                                                      "model.safetensors", "val.json"]
    # LoRA on q/v of the encoder and memory attention plus the whole decoder, nothing else
    assert all(".lora_" in k or k.startswith("mask_decoder.") for k in a)
    assert any(k.startswith("memory_attention.") for k in a) and any(k.startswith("vision_encoder.") for k in a)
    history = json.loads((full / "val.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [2, 4] and "0003" in history[0]["per_case"]
    assert "num_classes: 13" in (full / "config.yaml").read_text()


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(bank, tmp_path):
    # Attention key biases get a mathematically zero gradient (softmax ignores a constant added to
    # every key), i.e. float noise whose sign Adam turns into a full +-lr step: freeze them here so
    # the comparison measures the step, not Adam's amplification of rounding noise.
    args = [f"data.bank={bank}", *RUN_BASE, "data.train=['0001','0002']", "optim.max_iterations=2",
            "checkpoint_every=2", "optim.lr=0.002", "log.rank_hashes=true", r"model.peft.freeze=['k_proj\.bias']"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ragsam.cli.main", "train-rag", "--config", "rag_tiny", "--out", str(tmp_path / "ddp"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / "debug" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    single = train_rag(load_rag_config("rag_tiny", [*args, "optim.batch_size=2"]), tmp_path / "one")
    a, b = load_file(tmp_path / "ddp" / "last.safetensors"), load_file(single / "last.safetensors")
    init = load_rag_config("rag_tiny", [*args])
    assert a.keys() == b.keys()
    moved = max(float((b[k] - v).abs().max()) for k, v in _initial(init).items())
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # the same two AdamW steps up to float rounding (Adam divides near-zero gradients by their own
    # size, so a few elements differ by more than the rounding), and a real step was taken
    assert moved > 1e-3 and float(diffs.max()) < 1e-3 and float((diffs > 1e-5).float().mean()) < 1e-3
    assert (tmp_path / "ddp" / "log.csv").read_text().splitlines()[1].split(",")[3] == \
        (single / "log.csv").read_text().splitlines()[1].split(",")[3]  # the same first loss


def _initial(cfg):
    from ragsam.training.rag_data import build_episodes
    from ragsam.training.rag_model import build_rag_model
    from ragsam.utils.seeding import seed_everything

    build_episodes(cfg)
    seed_everything(cfg.seed)
    model = build_rag_model(cfg)
    return {n: p.detach().clone() for n, p in model.sam2.named_parameters() if p.requires_grad}


def test_segment_uses_the_trained_sam2_run(bank, tmp_path):
    from ragsam.inference.rag_segment import load_segmenter
    from ragsam.retrieval.segment import RagSegmenter

    run = train_rag(_cfg(bank, "data.train=['0001','0002']", "optim.max_iterations=2", "optim.lr=0.01"),
                    tmp_path / "run")
    image = bank.parent / "src" / "img" / "img0003.nii.gz"
    if not image.exists():
        image = next((bank.parent / "src").rglob("*0003*.nii.gz"))
    trained = load_segmenter(bank, sam2_run=run, device="cpu")
    plain = RagSegmenter(bank, "tiny", device="cpu")
    assert trained.info["run"] == str(run) and len(trained.info["run_weights"]) == 64
    assert trained.cache.model_key != plain.cache.model_key  # cached memories are per run
    ours = trained.segment(image, tmp_path / "ours.nii.gz", k=1)
    assert ours.sam2["run"] == str(run)
    with torch.no_grad():  # the run's LoRA was merged into the base weights, and it moved them
        from ragsam.training.rag_model import load_sam2_run

        merged, _ = load_sam2_run(run, merge=True)
        unmerged, _ = load_sam2_run(run, merge=False)
        pixels = torch.rand(1, 3, 128, 128)
        x = merged.get_image_features(pixels, return_dict=True).fpn_hidden_states[-1]
        y = unmerged.get_image_features(pixels, return_dict=True).fpn_hidden_states[-1]
        z = plain.model.get_image_features(pixels, return_dict=True).fpn_hidden_states[-1]
    assert torch.allclose(x, y, atol=1e-4) and not torch.allclose(x, z, atol=1e-4)
    code = run_cli(["segment", str(image), "-o", str(tmp_path / "cli.nii.gz"), "--index", str(bank),
                    "--sam2-run", str(run), "--k", "1", "--device", "cpu", "--json"])
    assert code == 0
    assert run_cli(["segment", str(image), "-o", str(tmp_path / "bad.nii.gz"), "--index", str(bank),
                    "--sam2-run", str(tmp_path), "--device", "cpu"]) == 2
