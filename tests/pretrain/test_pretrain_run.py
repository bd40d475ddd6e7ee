"""``ragsam pretrain-tiny --preset micro``: every stage end to end in seconds, loadable by the users' loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ragsam.cli.main import run_cli
from ragsam.errors import InputError
from ragsam.hub.tiny_models import tiny_models
from ragsam.pretrain import PRESETS, get_settings


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "tiny"
    assert run_cli(["pretrain-tiny", "--preset", "micro", "--out", str(out)]) == 0
    return out


def test_micro_run_writes_three_loadable_models_with_a_manifest(micro: Path) -> None:
    from ragsam.models.build import build_sam_model
    from ragsam.models.sam2 import build_sam2
    from ragsam.retrieval.embedder import build_embedder

    models = tiny_models(micro)  # checksums verified
    manifest = models.manifest
    assert manifest["settings"] == json.loads(json.dumps(PRESETS["micro"].__dict__))
    assert set(manifest["cpu_seconds"]) == {"corpus", "prepare", "sam", "embedder", "bank", "sam2"}
    assert manifest["stats"]["corpus"]["cases"] == 3 and manifest["stats"]["sam2"]["episodes"] == 2
    sam = build_sam_model("tiny", str(models.sam), num_classes=13, image_size=64)
    assert sam.load_report.new == []
    images = torch.rand(1, 3, 64, 64)
    assert sam(images).shape == (1, 14, 64, 64)
    sam2, info = build_sam2(str(models.sam2), device="cpu")
    assert info["image_size"] == 64
    embedder = build_embedder(str(models.embedder), image_size=models.embedder_image_size, device="cpu")
    vectors = embedder.embed(np.zeros((2, 64, 64), np.float32))
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_an_existing_output_is_refused_before_any_work(micro: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in micro.iterdir())
    assert run_cli(["pretrain-tiny", "--preset", "micro", "--out", str(micro)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in micro.iterdir()) == before


def test_settings_are_checked() -> None:
    assert get_settings("micro", seed=3).seed == 3
    with pytest.raises(InputError, match="unknown pre-training preset"):
        get_settings("huge")
    with pytest.raises(InputError, match="sam2_image_size of 64"):
        get_settings("micro", sam2_image_size=96)
