"""DINOv2 backbones (ragsam.models.dinov2): named architectures, resolution of the weights, refusals."""

from __future__ import annotations

import pytest
import torch

from ragsam.errors import InputError
from ragsam.models.dinov2 import load_dinov2, tiny_config


def test_tiny_is_seeded_and_named() -> None:
    a, name = load_dinov2("tiny", seed=3)
    b, _ = load_dinov2("tiny", seed=3)
    c, _ = load_dinov2("tiny", seed=4)
    assert name == "tiny" and not a.training
    assert (a.config.hidden_size, a.config.num_hidden_layers, a.config.patch_size) == (32, 2, 14)
    assert a.config.hidden_size == tiny_config().hidden_size
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embeddings.cls_token"], sc["embeddings.cls_token"])


def test_save_pretrained_folder_loads_under_its_absolute_path(tmp_path) -> None:
    model, _ = load_dinov2("tiny", seed=1)
    model.save_pretrained(tmp_path / "dino")
    loaded, name = load_dinov2(tmp_path / "dino")
    assert name == str((tmp_path / "dino").resolve())
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_refusals(tmp_path) -> None:
    with pytest.raises(InputError, match="weights file does not exist"):
        load_dinov2(tmp_path / "missing.pth")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported weights file suffix '.bin'"):
        load_dinov2(tmp_path / "w.bin")
    with pytest.raises(InputError, match="no such DINOv2 weights"):
        load_dinov2("not-a-model")
