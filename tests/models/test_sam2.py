"""Building and loading SAM 2 (ragsam.models.sam2)."""

from __future__ import annotations

import json

import pytest
import torch

from ragsam.errors import InputError
from ragsam.models.sam2 import OBJECT_SCORE_BIAS, build_sam2, tiny_sam2_config
from ragsam.retrieval.sam2_memory import Sam2MemorySegmenter

S = 128


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _segment(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(3, S, S, generator=gen)
    labels = torch.zeros(2, S, S, dtype=torch.uint8)
    labels[0, 10:60, 20:90] = 4
    labels[1, 30:70, 40:100] = 4
    return Sam2MemorySegmenter(model).segment_slice(images[2], images[:2], labels).logits


def test_tiny_is_seeded_and_round_trips_through_save_pretrained(tmp_path):
    model, info = build_sam2("tiny", seed=5)
    assert info["kind"] == "tiny" and info["image_size"] == S and info["parameters"] < 3_000_000
    assert not model.training
    again, _ = build_sam2("tiny", seed=5)
    other, _ = build_sam2("tiny", seed=6)
    state, state2 = model.state_dict(), again.state_dict()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    assert not torch.equal(state["memory_temporal_positional_encoding"], other.state_dict()[
        "memory_temporal_positional_encoding"])
    # every tensor the transformers initialiser leaves at zero is random here (see module docstring)
    assert state["memory_temporal_positional_encoding"].abs().min() > 0
    assert state["no_object_pointer"].abs().sum() > 0
    assert torch.all(state["mask_decoder.pred_obj_score_head.proj_out.bias"] == OBJECT_SCORE_BIAS)
    # the user path for a Hugging Face folder: save_pretrained -> build_sam2(folder)
    model.save_pretrained(tmp_path / "sam2-tiny")
    loaded, info2 = build_sam2(str(tmp_path / "sam2-tiny"))
    assert info2["kind"] == "hf" and info2["image_size"] == S
    assert torch.equal(_segment(loaded), _segment(model))


def test_hf_folder_with_unexpected_or_missing_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model, _ = build_sam2("tiny", seed=5)
    model.save_pretrained(tmp_path / "extra")
    file = tmp_path / "extra" / "model.safetensors"
    tensors = load_file(str(file))
    save_file({**tensors, "extra.weight": torch.zeros(2)}, str(file), metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"extra: 1 unexpected keys in the checkpoint: extra.weight"):
        build_sam2(str(tmp_path / "extra"))
    del tensors["no_object_pointer"]
    save_file(tensors, str(file), metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"extra: 1 SAM 2 weights missing from the checkpoint: no_object_pointer"):
        build_sam2(str(tmp_path / "extra"))


def test_random_is_the_hiera_tiny_configuration():
    model, info = build_sam2("random", seed=0)
    backbone = model.config.vision_config.backbone_config
    assert info["image_size"] == 1024
    assert backbone.blocks_per_stage == [1, 2, 7, 2] and backbone.global_attention_blocks == [5, 7, 9]
    assert backbone.embed_dim_per_stage == [96, 192, 384, 768]
    assert model.config.memory_attention_num_layers == 4 and model.config.num_maskmem == 7
    assert 35_000_000 < info["parameters"] < 45_000_000  # SAM 2.1 Hiera-T has 38.9 M


def test_tiny_config_refuses_bad_size():
    with pytest.raises(InputError, match="multiple of 64"):
        tiny_sam2_config(image_size=100)


def test_refusals(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="does not exist"):
        build_sam2(str(tmp_path / "nope.pt"))
    with pytest.raises(InputError, match="does not exist"):
        build_sam2(str(tmp_path / "a" / "b" / "c"))
    bad_suffix = tmp_path / "weights.bin"
    bad_suffix.write_bytes(b"x")
    with pytest.raises(InputError, match="unknown SAM 2 weights format '.bin'"):
        build_sam2(str(bad_suffix))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="corrupt.pt"):
        build_sam2(str(corrupt))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(InputError, match="no config.json"):
        build_sam2(str(empty_dir))
    sam1 = tmp_path / "sam1"
    sam1.mkdir()
    (sam1 / "config.json").write_text(json.dumps({"model_type": "sam"}))
    with pytest.raises(InputError, match="model_type 'sam'"):
        build_sam2(str(sam1))
    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        build_sam2("tiny", device="gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        build_sam2("tiny", device="cuda")
