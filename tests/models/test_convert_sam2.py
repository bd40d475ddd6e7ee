"""Official SAM 2 checkpoint names -> transformers names (ragsam.models.convert_sam2).

Limits: no real Meta checkpoint exists here. The tests check the mapping on the
tiny architecture written in the official layout (inverse mapping -> .pt ->
load -> identical outputs) and that the released sizes are recognised from
the trunk's shapes. The key names were separately checked against a model built
from the official ``sam2`` 1.1.0 source (every key mapped, identical image
features, memory encodings and tracked masks up to bfloat16 memory storage), but
that source is not part of this repository.
"""

from __future__ import annotations

import pytest
import torch

from ragsam.errors import InputError
from ragsam.models.convert_sam2 import (
    convert_official_state_dict,
    is_official_layout,
    official_config,
    to_official_state_dict,
)
from ragsam.models.sam2 import build_sam2
from ragsam.retrieval.sam2_memory import Sam2MemorySegmenter

S = 128


@pytest.fixture(scope="module")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_sam2("tiny", seed=2)[0]
    torch.set_num_threads(threads)


def _segment(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    images = torch.rand(3, S, S, generator=gen)
    labels = torch.zeros(2, S, S, dtype=torch.uint8)
    labels[0, 10:60, 20:90] = 1
    labels[1, 70:120, 40:100] = 2
    return Sam2MemorySegmenter(model).segment_slice(images[2], images[:2], labels).logits


def test_official_names_examples(tiny):
    official = to_official_state_dict(tiny.state_dict())
    assert is_official_layout(official) and not is_official_layout(tiny.state_dict())
    # names as they appear in Meta's sam2.1_hiera_*.pt files
    for key in ("image_encoder.trunk.patch_embed.proj.weight", "image_encoder.trunk.blocks.1.mlp.layers.1.weight",
                "image_encoder.neck.convs.0.conv.weight", "maskmem_tpos_enc", "no_mem_embed", "no_obj_ptr",
                "no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_proj.layers.2.bias",
                "memory_attention.layers.0.cross_attn_image.out_proj.weight", "memory_attention.norm.weight",
                "memory_encoder.mask_downsampler.encoder.12.weight", "memory_encoder.fuser.layers.0.gamma",
                "memory_encoder.pix_feat_proj.weight", "memory_encoder.out_proj.bias",
                "sam_prompt_encoder.point_embeddings.3.weight",
                "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                "sam_prompt_encoder.mask_downscaling.6.weight", "sam_mask_decoder.output_upscaling.3.weight",
                "sam_mask_decoder.transformer.layers.1.norm4.bias", "sam_mask_decoder.iou_prediction_head.layers.2.bias",
                "sam_mask_decoder.pred_obj_score_head.layers.1.weight", "mask_downsample.weight"):
        assert key in official, key
    assert len(official) == len(tiny.state_dict()) + 2  # 4 point embeddings stacked in 1, Gaussian matrix stored twice
    back = convert_official_state_dict(official, "x.pt")
    state = tiny.state_dict()
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_official_pt_round_trip_gives_identical_outputs(tiny, tmp_path):
    path = tmp_path / "sam2.1_tiny_official.pt"
    torch.save({"model": to_official_state_dict(tiny.state_dict())}, path)
    loaded, info = build_sam2(str(path))
    assert info["kind"] == "official" and info["name"] == "tiny"
    assert torch.equal(_segment(loaded), _segment(tiny))


def test_strictness(tiny, tmp_path):
    official = to_official_state_dict(tiny.state_dict())
    with pytest.raises(InputError, match="not SAM 2 weights.*'extra.weight'"):
        convert_official_state_dict({**official, "extra.weight": torch.zeros(1)}, "x.pt")
    missing = dict(official)
    del missing["memory_encoder.fuser.layers.0.gamma"]
    path = tmp_path / "missing.pt"
    torch.save({"model": missing}, path)
    with pytest.raises(InputError, match="missing.pt: 1 SAM 2 weights missing.*memory_fuser.layers.0.scale"):
        build_sam2(str(path))
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": official, "note": object()}, pickled)
    with pytest.raises(InputError, match="refusing to unpickle"):
        build_sam2(str(pickled))
    hf_names = tmp_path / "hf_names.pt"
    torch.save({"model": tiny.state_dict()}, hf_names)
    with pytest.raises(InputError, match="not an official SAM 2 checkpoint"):
        build_sam2(str(hf_names))


def _trunk(width: int, stages: list[int], v21: bool = True) -> dict[str, torch.Tensor]:
    """Just enough of an official state dict for the architecture to be recognised."""
    state = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(width, 3, 1, 1)}
    block = 0
    for i, n in enumerate(stages):
        for j in range(n):
            state[f"image_encoder.trunk.blocks.{block}.attn.qkv.weight"] = torch.zeros(1)
            if i > 0 and j == 0:
                state[f"image_encoder.trunk.blocks.{block}.proj.weight"] = torch.zeros(1)
            block += 1
    if v21:
        state["no_obj_embed_spatial"] = torch.zeros(1, 64)
        state["obj_ptr_tpos_proj.weight"] = torch.zeros(64, 256)
    return state


@pytest.mark.parametrize(("width", "stages", "name", "globals_"), [
    (96, [1, 2, 7, 2], "sam2.1_hiera_tiny", [5, 7, 9]),
    (96, [1, 2, 11, 2], "sam2.1_hiera_small", [7, 10, 13]),
    (112, [2, 3, 16, 3], "sam2.1_hiera_base_plus", [12, 16, 20]),
    (144, [2, 6, 36, 4], "sam2.1_hiera_large", [23, 33, 43]),
])
def test_released_sizes_are_recognised(width, stages, name, globals_):
    config, found = official_config(_trunk(width, stages), "x.pt")
    assert found == name
    backbone = config.vision_config.backbone_config
    assert backbone.blocks_per_stage == stages and backbone.global_attention_blocks == globals_
    assert config.vision_config.backbone_channel_list == [width * 8, width * 4, width * 2, width]
    assert config.enable_occlusion_spatial_embedding and config.enable_temporal_pos_encoding_for_object_pointers


def test_sam2_0_and_unknown_trunks():
    config, name = official_config(_trunk(96, [1, 2, 7, 2], v21=False), "old.pt")
    assert name == "sam2_hiera_tiny"
    assert not config.enable_occlusion_spatial_embedding
    assert not config.enable_temporal_pos_encoding_for_object_pointers  # SAM 2.0: no pointer encoding
    with pytest.raises(InputError, match=r"unknown Hiera trunk \(width 64, blocks per stage \[1, 1, 1, 1\]\)"):
        official_config(_trunk(64, [1, 1, 1, 1]), "odd.pt")
