"""Apply a fine-tuning method to a :class:`~ragsam.models.sam.MultiOrganSam` and manage its tensors.

Which parameters train (``requires_grad``), by method:

* ``lora`` (SAMed): the image encoder is frozen; LoRA on the ``targets`` of every
  ViT block trains.
* ``adapter`` (Med-SA): the image encoder is frozen; the two adapters per block train.
* ``none``: full fine-tuning, every parameter trains (prompt encoder included).

then, for every method, the mask decoder: ``full`` (all of it trains), ``lora``
(SAMed_s: LoRA rank ``decoder_rank`` on the q and v projections of every
attention of the two-way transformer, which is otherwise frozen; the
segmentation head -- IoU/mask tokens, upscaling, hypernetwork MLPs, IoU head --
trains, as in the paper's section 3.1 "apply LoRA to the transformer layer and
fine-tune the segmentation head") or ``frozen`` (only decoder adapters, if any,
train). The prompt encoder trains with ``train_prompt_encoder`` (or method
``none``), its random-Fourier positional matrix only with ``train_positional_embedding``
as well. Finally parameters matching any ``freeze`` pattern are frozen.
"""

from __future__ import annotations

import re
from os import PathLike
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from ragsam.errors import InputError
from ragsam.peft.adapter import add_block_adapters
from ragsam.peft.config import (
    ADAPTER_INITS,
    DECODER_MODES,
    LORA_TARGETS,
    PEFT_METHODS,
    PeftConfig,
    check_ranks,
)
from ragsam.peft.lora import lora_scale, merge_lora, wrap_linear
from ragsam.utils.safetensors_io import save_safetensors
from ragsam.utils.state_dict import load_exactly

_PEFT_NAME = re.compile(r"(\.lora_[ab]\.|\.attn_adapter\.|\.mlp_adapter\.)")


def validate_peft(cfg: PeftConfig) -> None:
    """Refuse impossible settings, quoting the bad value."""
    if cfg.method not in PEFT_METHODS:
        raise InputError(None, f"peft.method {cfg.method!r} is not one of {', '.join(PEFT_METHODS)}")
    if cfg.decoder not in DECODER_MODES:
        raise InputError(None, f"peft.decoder {cfg.decoder!r} is not one of {', '.join(DECODER_MODES)}")
    bad = [t for t in cfg.targets if t not in LORA_TARGETS]
    if bad or (cfg.method == "lora" and not cfg.targets):
        raise InputError(None, f"peft.targets {list(cfg.targets)!r} must be a non-empty subset of "
                               f"{', '.join(LORA_TARGETS)}")
    check_ranks(cfg)
    if cfg.adapter_init not in ADAPTER_INITS:
        raise InputError(None, f"peft.adapter_init {cfg.adapter_init!r} is not one of {', '.join(ADAPTER_INITS)}")
    if not 0 < cfg.adapter_ratio <= 4:
        raise InputError(None, f"peft.adapter_ratio must be in (0, 4], got {cfg.adapter_ratio}")
    for pattern in cfg.freeze:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InputError(None, f"peft.freeze pattern {pattern!r} is not a regular expression ({exc})") from None


def _encoder_lora(model: nn.Module, cfg: PeftConfig) -> None:
    for layer in model.vision_encoder.layers:
        width = layer.attn.qkv.in_features
        slices = {t: (i * width, (i + 1) * width) for i, t in enumerate(("q", "k", "v")) if t in cfg.targets}
        scale = lora_scale(cfg.alpha, cfg.rank)
        if slices:
            wrap_linear(layer.attn, "qkv", cfg.rank, scale, slices)
        if "proj" in cfg.targets:
            wrap_linear(layer.attn, "proj", cfg.rank, scale)
        if "mlp" in cfg.targets:
            wrap_linear(layer.mlp, "lin1", cfg.rank, scale)
            wrap_linear(layer.mlp, "lin2", cfg.rank, scale)


def decoder_attentions(model: nn.Module) -> list[nn.Module]:
    """The attention modules of a SAM / SAM 2 mask decoder's two-way transformer (same layout in both)."""
    transformer = model.mask_decoder.transformer
    attns = []
    for layer in transformer.layers:
        attns += [layer.self_attn, layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    return attns + [transformer.final_attn_token_to_image]


def apply_peft(model: nn.Module, cfg: PeftConfig) -> nn.Module:
    """Insert the PEFT modules of ``cfg`` into ``model`` (in place) and set ``requires_grad``.

    Call once, after the base weights are loaded (LoRA B and, with ``adapter_init: zero``, adapter
    Up start at zero, so outputs are unchanged). Returns ``model``.
    """
    validate_peft(cfg)
    if getattr(model, "peft_config", None) is not None:
        raise RuntimeError("PEFT is already applied to this model")
    model.requires_grad_(cfg.method == "none")
    if cfg.method == "lora":
        _encoder_lora(model, cfg)
    elif cfg.method == "adapter":
        for layer in model.vision_encoder.layers:
            width = layer.attn.qkv.in_features
            add_block_adapters(layer, layer.attn, layer.mlp, width, cfg.adapter_ratio, cfg.adapter_scale,
                               zero_up=cfg.adapter_init == "zero")
    decoder = model.mask_decoder
    decoder.requires_grad_(cfg.decoder != "frozen")
    if cfg.decoder == "lora":
        decoder.transformer.requires_grad_(False)
        for attn in decoder_attentions(model):
            wrap_linear(attn, "q_proj", cfg.decoder_rank, lora_scale(cfg.alpha, cfg.decoder_rank))
            wrap_linear(attn, "v_proj", cfg.decoder_rank, lora_scale(cfg.alpha, cfg.decoder_rank))
    if cfg.decoder_adapters:
        for layer in decoder.transformer.layers:
            add_block_adapters(layer, layer.cross_attn_token_to_image, layer.mlp, layer.hidden_size,
                               cfg.adapter_ratio, cfg.adapter_scale, zero_up=cfg.adapter_init == "zero")
    train_prompt = cfg.train_prompt_encoder or cfg.method == "none"
    model.prompt_encoder.requires_grad_(train_prompt)  # its shared_embedding IS shared_image_embedding
    model.shared_image_embedding.requires_grad_(train_prompt and cfg.train_positional_embedding)
    unfreeze_and_freeze(model, _PEFT_NAME, cfg.freeze)
    model.peft_config = cfg
    return model


def unfreeze_and_freeze(model: nn.Module, trainable: re.Pattern[str], freeze: list[str]) -> None:
    """Parameters whose names match ``trainable`` (the PEFT modules just added) train, whatever
    was frozen before; then those matching any regular expression in ``freeze`` are frozen (last word)."""
    for name, param in model.named_parameters():
        if trainable.search(name):
            param.requires_grad_(True)
    for pattern in freeze:
        for name, param in model.named_parameters():
            if re.search(pattern, name):
                param.requires_grad_(False)


def is_peft_parameter(name: str) -> bool:
    """True for LoRA / adapter parameter names (``...lora_a.q``, ``...attn_adapter.down.weight``)."""
    return bool(_PEFT_NAME.search(name))


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter with ``requires_grad`` (detached), by name; shared tensors appear once."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, path: str | PathLike, metadata: dict[str, str] | None = None,
                   force: bool = True) -> Path:
    """Write the trainable tensors to ``path`` (safetensors, atomic, byte-reproducible). Returns the path."""
    tensors = {k: v.contiguous().clone() for k, v in trainable_state_dict(model).items()}
    return save_safetensors(tensors, path, metadata, force=force)


def load_trainable(model: nn.Module, path: str | PathLike) -> dict[str, str]:
    """Load tensors saved by :func:`save_trainable` into ``model``; returns the file's metadata.

    Strict: the file must hold exactly the model's trainable parameters, with
    the same shapes.

    Raises:
        InputError: unreadable file, missing / unexpected keys, wrong shapes.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable safetensors file ({str(exc).splitlines()[0][:160]})") from None
    load_exactly(model, tensors, str(path), weights_name="trainable tensors", trainable_only=True)
    return dict(metadata)


def merge_peft(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight (in place; outputs unchanged). Returns ``model``.

    Adapters are non-linear and stay as they are (:func:`has_adapters`).
    """
    merge_lora(model)
    return model


def has_adapters(model: nn.Module) -> bool:
    """True if the model holds Med-SA adapters (which cannot be folded into SAM's weights)."""
    return any(".attn_adapter." in n or ".mlp_adapter." in n for n, _ in model.named_parameters())


def _component(name: str) -> str:
    if is_peft_parameter(name):
        return "peft"
    if name.startswith("vision_encoder."):
        return "image_encoder"
    if name.startswith(("prompt_encoder.", "shared_image_embedding.")):
        return "prompt_encoder"
    if name.startswith("mask_decoder."):
        return "mask_decoder"
    return "other"


def count_parameters(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(trainable, total) parameter counts per component and ``total``.

    Components: ``image_encoder``, ``prompt_encoder``, ``mask_decoder`` (base
    weights) and ``peft`` (LoRA and adapter tensors). Shared tensors count once.
    """
    counts: dict[str, list[int]] = {c: [0, 0] for c in ("image_encoder", "prompt_encoder", "mask_decoder", "peft")}
    for name, p in model.named_parameters():
        entry = counts.setdefault(_component(name), [0, 0])
        entry[1] += p.numel()
        entry[0] += p.numel() if p.requires_grad else 0
    counts["total"] = [sum(v[0] for v in counts.values()), sum(v[1] for v in counts.values())]
    return {k: (v[0], v[1]) for k, v in counts.items()}


def describe(cfg: Any) -> str:
    """One line naming the method (for logs and the ``info`` command)."""
    if cfg.method == "lora":
        return f"LoRA r={cfg.rank} on {','.join(cfg.targets)}, decoder {cfg.decoder}"
    if cfg.method == "adapter":
        start = ", up at nn.Linear init" if cfg.adapter_init == "default" else ""
        return f"Med-SA adapters (ratio {cfg.adapter_ratio}, s={cfg.adapter_scale}{start}), decoder {cfg.decoder}"
    return f"full fine-tuning, decoder {cfg.decoder}"
