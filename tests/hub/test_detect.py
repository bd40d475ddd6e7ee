"""``ragsam.hub.detect``: weights found offline in the Hugging Face cache, else the shipped tiny models."""

from __future__ import annotations

from pathlib import Path

from ragsam.hub.detect import cached_hf_folder, detect_weights
from ragsam.hub.tiny_models import TINY_MODELS_DIR


def test_weights_are_detected_offline_from_the_cache(tmp_path: Path) -> None:
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    none = detect_weights(cache_dir=empty)  # falls back to the shipped, checksum-verified tiny models
    assert (none.sam_arch, none.sam_weights, none.sam2_weights, none.embedder_weights) == (
        "tiny", str(TINY_MODELS_DIR / "sam"), str(TINY_MODELS_DIR / "sam2"), str(TINY_MODELS_DIR / "embedder"))
    assert none.pretrained == {"sam": False, "sam2": False, "embedder": False}
    assert none.embedder_image_size == 56 and "synthetic phantoms" in none.sam2_label
    # a cached snapshot in the Hugging Face cache layout (refs/main -> snapshots/<commit>)
    repo = tmp_path / "hub" / "models--facebook--sam-vit-base"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert cached_hf_folder("facebook/sam-vit-base", tmp_path / "hub") == repo / "snapshots" / commit
    found = detect_weights(cache_dir=tmp_path / "hub")
    assert found.sam_arch == "sam_vit_b" and found.sam_weights == str(repo / "snapshots" / commit)
    assert found.pretrained == {"sam": True, "sam2": False, "embedder": False}
    assert "LoRA" in found.sam_label and found.sam2_weights == str(TINY_MODELS_DIR / "sam2")
