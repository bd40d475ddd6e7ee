"""The shipped tiny models: checksums match the manifest, and every folder loads through the users' loaders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ragsam.errors import InputError
from ragsam.hub.tiny_models import TINY_MODELS_DIR, tiny_models, verify_tiny_models


def test_shipped_files_match_the_manifest_and_are_small() -> None:
    manifest = verify_tiny_models()
    assert set(manifest["files"]) >= {"sam/model.safetensors", "sam2/model.safetensors",
                                      "embedder/model.safetensors", "sam/config.json"}
    total = sum((TINY_MODELS_DIR / rel).stat().st_size for rel in manifest["files"])
    assert total < 16 * 2**20  # "a few MB": shipped inside the wheel
    assert manifest["settings"]["seed"] == 0 and "synthetic" in manifest["what"]


def _assert_loaded(model: torch.nn.Module, file: Path) -> None:
    """Every saved tensor is in the model (by name where names match, else by element count and sum)."""
    saved = load_file(str(file))
    state = model.state_dict()
    if set(saved) <= set(state):
        for key, value in saved.items():
            assert torch.equal(state[key].cpu(), value), key
        return
    # a model class that renames the Hugging Face keys: the same numbers must be there
    assert sum(v.numel() for v in saved.values()) == sum(v.numel() for k, v in state.items()
                                                         if "position_ids" not in k)
    total = sum(float(v.double().sum()) for v in saved.values())
    assert abs(total - sum(float(v.double().sum()) for k, v in state.items() if "position_ids" not in k)) < 1e-6


def test_sam_loads_strictly_with_the_training_loader() -> None:
    from ragsam.models.build import build_sam_model

    models = tiny_models()
    model = build_sam_model("tiny", str(models.sam), num_classes=13, image_size=models.slice_size)
    assert model.load_report.new == [] and model.load_report.dropped == [] and model.load_report.resized == []
    _assert_loaded(model, models.sam / "model.safetensors")


def test_sam2_and_embedder_load_strictly() -> None:
    from ragsam.models.sam2 import build_sam2
    from ragsam.retrieval.embedder import build_embedder

    models = tiny_models()
    sam2, info = build_sam2(str(models.sam2), device="cpu")
    assert info["kind"] == "hf" and info["image_size"] == 64
    _assert_loaded(sam2, models.sam2 / "model.safetensors")
    embedder = build_embedder(str(models.embedder), image_size=models.embedder_image_size, device="cpu")
    assert embedder.dim == 32
    _assert_loaded(embedder.model, models.embedder / "model.safetensors")


def test_a_changed_missing_or_extra_file_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(TINY_MODELS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert tiny_models(copy).sam == copy / "sam"
    config = copy / "sam2" / "config.json"
    config.write_text(config.read_text() + " ")
    with pytest.raises(InputError, match="SHA-256 differs"):
        verify_tiny_models(copy)
    config.unlink()
    with pytest.raises(InputError, match="missing"):
        verify_tiny_models(copy)
    shutil.copyfile(TINY_MODELS_DIR / "sam2" / "config.json", config)
    (copy / "embedder" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not listed"):
        verify_tiny_models(copy)
    (copy / "manifest.json").write_text(json.dumps({"no": "files"}))
    with pytest.raises(InputError, match="not a tiny-models manifest"):
        verify_tiny_models(copy)
