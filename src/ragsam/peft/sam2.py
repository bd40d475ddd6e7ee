"""Parameter-efficient fine-tuning of SAM 2 (``Sam2VideoModel``) for retrieval (``ragsam train-rag``).

With ``method: lora`` every SAM 2 parameter is frozen, then LoRA
(:class:`ragsam.peft.lora.LoRALinear`: B = 0 at initialisation, so outputs are
unchanged) is put on

* the image encoder: every Hiera block's fused ``attn.qkv`` (slices ``q``, ``k``,
  ``v`` of its ``3 * dim_out`` rows) and ``attn.proj`` (target ``proj``);
* memory attention: ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj`` (target ``proj``) of
  the self-attention and of the cross-attention to the memories, in every layer;

and the mask decoder trains per ``decoder``: ``full``; ``lora`` (LoRA rank
``decoder_rank`` on q / v of every attention of its two-way transformer, which is
frozen, while its heads -- tokens, upscaling, hypernetwork MLPs, IoU and object-score
heads -- train, as the SAMed_s preset does for SAM); ``frozen``. ``method: none``
trains every parameter. The memory encoder, prompt encoder and pointer projections
stay frozen under LoRA: gradients flow *through* the memory encoder into the image
encoder's LoRA. LoRA keeps the base parameter names, so the base SAM 2 checkpoint
loads unchanged and :func:`ragsam.peft.apply.save_trainable` writes only the trained tensors.
"""

from __future__ import annotations

import re

from torch import nn

from ragsam.peft.apply import decoder_attentions, unfreeze_and_freeze
from ragsam.peft.config import Sam2PeftConfig
from ragsam.peft.lora import lora_scale, wrap_linear

_MEMORY_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "proj": "o_proj"}
_LORA_NAME = re.compile(r"\.lora_[ab]\.")


def _image_encoder_lora(model: nn.Module, cfg: Sam2PeftConfig) -> None:
    for block in model.vision_encoder.backbone.blocks:
        qkv = block.attn.qkv
        width = qkv.out_features // 3
        slices = {t: (i * width, (i + 1) * width) for i, t in enumerate(("q", "k", "v")) if t in cfg.targets}
        if slices:
            wrap_linear(block.attn, "qkv", cfg.rank, lora_scale(cfg.alpha, cfg.rank), slices)
        if "proj" in cfg.targets:
            wrap_linear(block.attn, "proj", cfg.rank, lora_scale(cfg.alpha, cfg.rank))


def _memory_attention_lora(model: nn.Module, cfg: Sam2PeftConfig) -> None:
    for layer in model.memory_attention.layers:
        for attn in (layer.self_attn, layer.cross_attn_image):
            for target in cfg.targets:
                wrap_linear(attn, _MEMORY_NAMES[target], cfg.rank, lora_scale(cfg.alpha, cfg.rank))


def apply_sam2_peft(model: nn.Module, cfg: Sam2PeftConfig) -> nn.Module:
    """Insert LoRA into a ``Sam2VideoModel`` per ``cfg`` (in place) and set ``requires_grad``; returns it.

    Call once, after the base weights are loaded.
    """
    if getattr(model, "sam2_peft_config", None) is not None:
        raise RuntimeError("PEFT is already applied to this SAM 2")
    full = cfg.method == "none"
    model.requires_grad_(full)
    if not full:
        if cfg.image_encoder:
            _image_encoder_lora(model, cfg)
        if cfg.memory_attention:
            _memory_attention_lora(model, cfg)
        decoder = model.mask_decoder
        decoder.requires_grad_(cfg.decoder != "frozen")
        if cfg.decoder == "lora":
            decoder.transformer.requires_grad_(False)
            for attn in decoder_attentions(model):
                wrap_linear(attn, "q_proj", cfg.decoder_rank, lora_scale(cfg.alpha, cfg.decoder_rank))
                wrap_linear(attn, "v_proj", cfg.decoder_rank, lora_scale(cfg.alpha, cfg.decoder_rank))
    unfreeze_and_freeze(model, _LORA_NAME, cfg.freeze)
    model.sam2_peft_config = cfg
    return model
