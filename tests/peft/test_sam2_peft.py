"""LoRA / full fine-tuning of SAM 2 (ragsam.peft.sam2): what trains, and LoRA at B = 0 changes nothing."""

from __future__ import annotations

import torch

from ragsam.models.sam2 import build_sam2
from ragsam.peft.config import Sam2PeftConfig
from ragsam.peft.lora import LoRALinear
from ragsam.peft.sam2 import apply_sam2_peft


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_wraps_encoder_and_memory_attention_and_freezes_the_rest():
    model, _ = build_sam2("tiny")
    apply_sam2_peft(model, Sam2PeftConfig(rank=2, targets=["q", "v", "proj"], decoder="lora"))
    blocks = model.vision_encoder.backbone.blocks
    assert all(isinstance(b.attn.qkv, LoRALinear) and set(b.attn.qkv.slices) == {"q", "v"} for b in blocks)
    # Hiera's qkv has 3 * dim_out rows; q is the first third, v the last
    qkv = blocks[1].attn.qkv
    assert qkv.slices["v"] == (2 * qkv.out_features // 3, qkv.out_features)
    for layer in model.memory_attention.layers:
        for attn in (layer.self_attn, layer.cross_attn_image):
            assert all(isinstance(getattr(attn, n), LoRALinear) for n in ("q_proj", "v_proj", "o_proj"))
            assert not isinstance(attn.k_proj, LoRALinear)
    names = _trainable(model)
    assert names and all(".lora_" in n or n.startswith("mask_decoder.") for n in names)
    assert not any(n.startswith("mask_decoder.transformer.") and ".lora_" not in n for n in names)
    assert "mask_decoder.iou_token.weight" in names  # the heads train with a LoRA decoder
    assert not any(n.startswith(("memory_encoder.", "prompt_encoder.", "vision_encoder.")) and ".lora_" not in n
                   for n in names)


def test_full_mode_trains_everything_and_frozen_decoder_trains_only_lora():
    full, _ = build_sam2("tiny")
    apply_sam2_peft(full, Sam2PeftConfig(method="none"))
    assert _trainable(full) == {n for n, _ in full.named_parameters()}
    lora, _ = build_sam2("tiny")
    apply_sam2_peft(lora, Sam2PeftConfig(decoder="frozen", memory_attention=False, freeze=[r"blocks\.0\."]))
    names = _trainable(lora)
    assert names and all(".lora_" in n and n.startswith("vision_encoder.") for n in names)
    assert not any("blocks.0." in n for n in names)


def test_lora_at_initialisation_leaves_every_parameter_output_unchanged():
    base, _ = build_sam2("tiny")
    lora, _ = build_sam2("tiny")
    apply_sam2_peft(lora, Sam2PeftConfig(targets=["q", "k", "v", "proj"], decoder="lora"))
    pixels = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        a = base.get_image_features(pixels, return_dict=True).fpn_hidden_states
        b = lora.get_image_features(pixels, return_dict=True).fpn_hidden_states
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
