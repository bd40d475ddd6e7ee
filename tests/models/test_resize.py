"""Position-embedding resizing for inputs smaller than the pretraining size."""

from __future__ import annotations

import torch

from ragsam.models import build_sam_model
from ragsam.models.resize import resize_pos_embed, resize_rel_pos


def test_linear_ramp_stays_a_linear_ramp():
    # pos[0, i, j, c] = 3 i - 2 j + c on a 64 x 64 grid (SAM at 1024 px) -> 32 x 32 (512 px)
    i = torch.arange(64.0).view(1, 64, 1, 1)
    j = torch.arange(64.0).view(1, 1, 64, 1)
    c = torch.arange(4.0).view(1, 1, 1, 4)
    pos = 3 * i - 2 * j + c
    out = resize_pos_embed(pos, 32)
    assert out.shape == (1, 32, 32, 4)
    # bilinear, align_corners=False: new cell k samples old coordinate 2 k + 0.5
    k = torch.arange(32.0)
    expected = 3 * (2 * k.view(1, 32, 1, 1) + 0.5) - 2 * (2 * k.view(1, 1, 32, 1) + 0.5) + c
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    # steps of the ramp: 6 per row, -4 per column, everywhere
    torch.testing.assert_close(out[:, 1:] - out[:, :-1], torch.full((1, 31, 32, 4), 6.0), atol=1e-4, rtol=0)


def test_relative_table_127_to_63_rows_is_linear():
    table = torch.arange(127.0).view(127, 1) * torch.tensor([[1.0, -0.5]])
    out = resize_rel_pos(table, 63)
    assert out.shape == (63, 2)
    steps = out[1:, 0] - out[:-1, 0]
    torch.testing.assert_close(steps, torch.full((62,), 127 / 63), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, 1], -0.5 * out[:, 0])
    assert resize_rel_pos(table, 127) is table


def test_pretrained_size_is_loaded_exactly_and_smaller_sizes_resize(meta_checkpoint, official_sam):
    same = build_sam_model("tiny", str(meta_checkpoint), num_classes=3, image_size=128)
    assert same.load_report.resized == []
    assert torch.equal(same.vision_encoder.pos_embed, official_sam.image_encoder.pos_embed)
    assert torch.equal(same.vision_encoder.layers[1].attn.rel_pos_h, official_sam.image_encoder.blocks[1].attn.rel_pos_h)

    small = build_sam_model("tiny", str(meta_checkpoint), num_classes=3, image_size=64)
    assert sorted(small.load_report.resized) == sorted([
        "vision_encoder.pos_embed",
        "vision_encoder.layers.1.attn.rel_pos_h", "vision_encoder.layers.1.attn.rel_pos_w",
        "vision_encoder.layers.3.attn.rel_pos_h", "vision_encoder.layers.3.attn.rel_pos_w"])
    assert tuple(small.vision_encoder.pos_embed.shape) == (1, 4, 4, 64)  # 64 px / 16
    assert [layer.attn.rel_pos_h.shape[0] for layer in small.vision_encoder.layers] == [7, 7, 7, 7]
    # windowed blocks are untouched (their window does not change)
    assert torch.equal(small.vision_encoder.layers[0].attn.rel_pos_w, official_sam.image_encoder.blocks[0].attn.rel_pos_w)
    assert small.prompt_encoder.image_embedding_size == (4, 4)
    with torch.no_grad():
        assert tuple(small(torch.rand(1, 3, 64, 64)).shape) == (1, 4, 64, 64)


def test_vit_b_at_512_has_the_samed_shapes():
    from ragsam.models.registry import ARCHITECTURES, sam_config
    from ragsam.models.resize import resize_position_tensors
    from ragsam.models.sam import MultiOrganSam

    with torch.device("meta"):
        at1024 = MultiOrganSam(sam_config(ARCHITECTURES["sam_vit_b"], 1024), arch="sam_vit_b")
        at512 = MultiOrganSam(sam_config(ARCHITECTURES["sam_vit_b"], 512, num_mask_tokens=14), arch="sam_vit_b")
    state = {k: v for k, v in at1024.state_dict().items() if "pos" in k}
    assert tuple(state["vision_encoder.layers.2.attn.rel_pos_h"].shape) == (127, 64)
    target = {k: v.shape for k, v in at512.state_dict().items()}
    resized = resize_position_tensors(state, target)
    assert len(resized) == 1 + 4 * 2  # absolute embedding + h/w tables of the 4 global blocks
    assert tuple(state["vision_encoder.pos_embed"].shape) == (1, 32, 32, 768)
    assert tuple(state["vision_encoder.layers.2.attn.rel_pos_h"].shape) == (63, 64)
    assert tuple(state["vision_encoder.layers.0.attn.rel_pos_h"].shape) == (27, 64)  # window 14 unchanged
    assert at512.prompt_encoder.image_embedding_size == (32, 32) and at512.prompt_encoder.input_image_size == 512


def test_windowed_blocks_pad_a_grid_that_is_not_a_multiple_of_the_window(meta_checkpoint):
    # tiny at 96 px: 6 x 6 grid, window 4 -> padded to 8 x 8 (as ViT-B at 512 px pads 32 -> 42)
    model = build_sam_model("tiny", str(meta_checkpoint), num_classes=3, image_size=96).eval()
    with torch.no_grad():
        emb = model.encode(torch.rand(1, 3, 96, 96))
        assert tuple(emb.shape) == (1, 32, 6, 6) and torch.isfinite(emb).all()
        assert tuple(model(torch.rand(1, 3, 96, 96)).shape) == (1, 4, 96, 96)
