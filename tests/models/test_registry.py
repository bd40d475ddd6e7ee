"""Architecture registry: the published hyper-parameters and the tiny test model."""

from __future__ import annotations

import pytest
import torch

from ragsam.errors import InputError
from ragsam.models.registry import ARCHITECTURES, get_arch, identify_arch, sam_config
from ragsam.models.sam import MultiOrganSam


@pytest.mark.parametrize(("name", "width", "depth", "heads", "global_attn"), [
    ("sam_vit_b", 768, 12, 12, [2, 5, 8, 11]),
    ("sam_vit_l", 1024, 24, 16, [5, 11, 17, 23]),
    ("sam_vit_h", 1280, 32, 16, [7, 15, 23, 31]),
])
def test_published_hyper_parameters(name, width, depth, heads, global_attn):
    cfg = sam_config(get_arch(name), 512, num_mask_tokens=14)
    v = cfg.vision_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (width, depth, heads)
    assert list(v.global_attn_indexes) == global_attn and v.window_size == 14
    assert (v.output_channels, v.mlp_dim, v.image_size, v.patch_size) == (256, 4 * width, 512, 16)
    assert cfg.prompt_encoder_config.image_embedding_size == 32
    assert cfg.mask_decoder_config.num_multimask_outputs == 13
    assert identify_arch(width, depth) == name


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(InputError, match="unknown architecture 'vit_x'.*sam_vit_b, sam_vit_l, sam_vit_h, tiny"):
        get_arch("vit_x")


def test_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(InputError, match="image_size 500 must be a positive multiple of 16"):
        sam_config(ARCHITECTURES["tiny"], 500)


def test_tiny_has_the_sam_structure():
    torch.manual_seed(0)
    model = MultiOrganSam(sam_config(ARCHITECTURES["tiny"], 128, num_mask_tokens=4), arch="tiny")
    attn = [layer.attn for layer in model.vision_encoder.layers]
    # global blocks (1, 3) see the whole 8 x 8 grid: 2 * 8 - 1 rows; windowed blocks 2 * 4 - 1
    assert [a.rel_pos_h.shape[0] for a in attn] == [7, 15, 7, 15]
    assert tuple(model.vision_encoder.pos_embed.shape) == (1, 8, 8, 64)
    with torch.no_grad():
        assert tuple(model(torch.rand(1, 3, 128, 128)).shape) == (1, 4, 128, 128)
