"""LoRALinear: exact at init, hand-computed slice updates, merging, the SAMed parameter count."""

from __future__ import annotations

import torch
from torch import nn

from ragsam.models import ModelConfig, PeftConfig, build_model, count_parameters
from ragsam.peft.lora import LoRALinear, merge_lora, wrap_linear


def test_init_is_the_base_layer_and_names_are_kept():
    torch.manual_seed(0)
    parent = nn.Module()
    parent.qkv = nn.Linear(6, 18)
    base_weight = parent.qkv.weight
    x = torch.randn(5, 6)
    before = parent.qkv(x)
    lora = wrap_linear(parent, "qkv", rank=2, scale=1.0, slices={"q": (0, 6), "v": (12, 18)})
    assert lora.weight is base_weight  # the base tensor itself, under its own name
    assert torch.equal(parent.qkv(x), before)
    assert sorted(k for k, _ in parent.named_parameters()) == [
        "qkv.bias", "qkv.lora_a.q", "qkv.lora_a.v", "qkv.lora_b.q", "qkv.lora_b.v", "qkv.weight"]
    assert tuple(lora.lora_a["q"].shape) == (2, 6) and tuple(lora.lora_b["v"].shape) == (6, 2)
    assert lora.lora_a["q"].abs().sum() > 0 and lora.lora_b["q"].abs().sum() == 0


def test_update_goes_to_its_slice_only():
    base = nn.Linear(2, 6, bias=False)
    with torch.no_grad():
        base.weight.zero_()
    lora = LoRALinear(base, rank=1, scale=0.5, slices={"v": (4, 6)})
    with torch.no_grad():
        lora.lora_a["v"].copy_(torch.tensor([[1.0, 2.0]]))
        lora.lora_b["v"].copy_(torch.tensor([[3.0], [-1.0]]))
    out = lora(torch.tensor([[1.0, 1.0]]))
    # A x = 3 ; B (A x) = (9, -3) ; scale 0.5 -> rows 4, 5
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.0, 0.0, 4.5, -1.5]]))


def test_merge_gives_the_same_outputs():
    torch.manual_seed(1)
    parent = nn.Module()
    parent.lin = nn.Linear(8, 24)
    lora = wrap_linear(parent, "lin", rank=3, scale=2.0, slices={"q": (0, 8), "k": (8, 16)})
    with torch.no_grad():
        for p in lora.lora_b.values():
            p.normal_()
    x = torch.randn(4, 8)
    expected = parent.lin(x)
    assert merge_lora(parent) == 1
    assert type(parent.lin) is nn.Linear
    torch.testing.assert_close(parent.lin(x), expected, atol=1e-5, rtol=1e-5)


def test_samed_rank4_qv_adds_exactly_147456_parameters_to_vit_b():
    # 12 blocks x (q, v) x (A: 4 x 768 + B: 768 x 4) = 12 * 2 * 6144
    with torch.device("meta"):
        model = build_model(ModelConfig(arch="sam_vit_b", num_classes=13, image_size=512))
    counts = count_parameters(model)
    assert counts["peft"] == (147_456, 147_456)
    assert counts["image_encoder"][0] == 0
    assert counts["mask_decoder"][0] == counts["mask_decoder"][1] > 0


def test_other_targets_follow_the_formula():
    cfg = ModelConfig(arch="tiny", num_classes=3, image_size=64,
                      peft=PeftConfig(rank=2, targets=["k", "proj", "mlp"], decoder="frozen"))
    model = build_model(cfg)
    # tiny: width 64, mlp 128, 4 blocks. k: 2*64+64*2 ; proj: same ; lin1: 2*64+128*2 ; lin2: 2*128+64*2
    per_block = 256 + 256 + 384 + 384
    assert count_parameters(model)["peft"] == (4 * per_block, 4 * per_block)
    assert count_parameters(model)["total"][0] == 4 * per_block  # decoder frozen
