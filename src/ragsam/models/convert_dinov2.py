"""Official DINOv2 ``.pth`` checkpoints <-> the transformers ``Dinov2Model`` layout.

Meta publishes DINOv2 backbones as plain state dicts (``dinov2_vits14_pretrain.pth``,
``dinov2_vitb14_pretrain.pth``, ...) whose names follow the official
``DinoVisionTransformer`` modules. transformers (5.x) names the same tensors
differently and splits the fused attention projection:

==============================  ==============================================
official                         transformers ``Dinov2Model``
==============================  ==============================================
cls_token (1, 1, D)              embeddings.cls_token
pos_embed (1, 1 + G*G, D)        embeddings.position_embeddings
mask_token (1, D)                embeddings.mask_token
patch_embed.proj.{weight,bias}   embeddings.patch_embeddings.projection.*
blocks.N.norm1 / norm2           encoder.layer.N.norm1 / norm2
blocks.N.attn.qkv (3D, D)        encoder.layer.N.attention.{q,k,v}_proj (rows q|k|v)
blocks.N.attn.proj               encoder.layer.N.attention.o_proj
blocks.N.ls1.gamma / ls2.gamma   encoder.layer.N.layer_scale1/2.lambda1
blocks.N.mlp.fc1 / fc2           encoder.layer.N.mlp.fc1 / fc2
blocks.N.mlp.w12 (2H, D)         encoder.layer.N.mlp.gate_proj | up_proj (ViT-g SwiGLU)
blocks.N.mlp.w3                  encoder.layer.N.mlp.down_proj
norm                             layernorm
register_tokens (1, R, D)        embeddings.register_tokens (``*_reg4``: ``Dinov2WithRegistersModel``)
==============================  ==============================================

The row order of ``qkv`` follows the official attention, which reshapes the
projection output to ``(B, N, 3, heads, head_dim)``: rows ``[0, D)`` are the
query, ``[D, 2D)`` the key, ``[2D, 3D)`` the value. ``w12`` is chunked in two
along the output dimension; the first half goes through SiLU (the gate).

Also accepted: DINOv2 training checkpoints (``{"teacher": {...}}`` with a
``backbone.`` prefix, heads dropped), ``module.`` prefixes and chunked blocks
(``blocks.<chunk>.<N>.``, N is the global block index). Models with register
tokens (``dinov2_vits14_reg4_pretrain.pth`` ...) become a ``Dinov2WithRegistersModel``,
which puts the R registers between the class token and the patch tokens after the
position embeddings are added, as Meta's ``prepare_tokens_with_masks`` does.

Models loaded from these files resample their position embeddings with Meta's rule
(:mod:`ragsam.models.dinov2_pos`), not with transformers'.

Verified by round trips with randomly initialised models and, in
``tests/models/test_dinov2_meta_parity.py``, against Meta's own ``DinoVisionTransformer``
(PyPI ``dinov2`` 0.0.1.dev2) on official-format random weights; no real Meta file is
available on the build machine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from ragsam.errors import InputError

HEAD_DIM = 64  # every official DINOv2 backbone (ViT-S/B/L/g) uses 64-dimensional heads
# Meta's released backbones (dinov2/hub/backbones.py): tag -> (width, depth, heads); ViT-g uses SwiGLU.
OFFICIAL_VARIANTS = {"vits14": (384, 12, 6), "vitb14": (768, 12, 12), "vitl14": (1024, 24, 16),
                     "vitg14": (1536, 40, 24)}
REGISTERS = 4  # the *_reg4 checkpoints

_BLOCK = re.compile(r"^blocks\.(?:\d+\.)?(\d+)\.(.+)$")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")

# Per-block names that map one to one (official suffix -> transformers suffix).
_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "mlp.w3.weight": "mlp.down_proj.weight",
    "mlp.w3.bias": "mlp.down_proj.bias",
    "ls2.gamma": "layer_scale2.lambda1",
}
_TOP_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "mask_token": "embeddings.mask_token",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
    "register_tokens": "embeddings.register_tokens",
}
# Fused official tensors -> the transformers tensors they are split into, in order.
_BLOCK_SPLITS = {
    "attn.qkv.weight": ("attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight"),
    "attn.qkv.bias": ("attention.q_proj.bias", "attention.k_proj.bias", "attention.v_proj.bias"),
    "mlp.w12.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "mlp.w12.bias": ("mlp.gate_proj.bias", "mlp.up_proj.bias"),
}


def unwrap_official(checkpoint: dict, source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The backbone state dict inside an official or training checkpoint.

    Handles ``{"teacher": ...}`` / ``{"model": ...}`` / ``{"state_dict": ...}``
    wrappers and ``backbone.`` / ``module.`` prefixes (keys outside the backbone,
    e.g. ``dino_head.*``, are dropped when a ``backbone.`` prefix is present).
    """
    for key in ("teacher", "model", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise InputError(source, "not a DINOv2 state dict (expected a mapping of names to tensors)")
    state = dict(checkpoint)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def config_from_official(state: dict[str, torch.Tensor], source: str | os.PathLike,
                         num_heads: int | None = None) -> Dinov2Config | Dinov2WithRegistersConfig:
    """Infer the transformers config of an official state dict from its tensor shapes.

    Args:
        state: official-layout backbone tensors (see :func:`unwrap_official`).
        num_heads: attention heads; default ``hidden // 64`` as in every official model.
    Returns:
        A ``Dinov2Config``, or a ``Dinov2WithRegistersConfig`` when the file holds
        ``register_tokens`` (``(1, R, D)``).
    Raises:
        InputError: missing core tensors or shapes no DINOv2 has.
    """
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight"):
        if key not in state:
            raise InputError(source, f"not an official DINOv2 backbone: tensor {key!r} is missing")
    hidden = int(state["cls_token"].shape[-1])
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    positions = int(state["pos_embed"].shape[1]) - 1
    grid = round(positions ** 0.5)
    if grid * grid != positions:
        raise InputError(source, f"pos_embed holds {positions} patch positions, not a square grid")
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK.match(k))), default=-1)
    if depth == 0:
        raise InputError(source, "not an official DINOv2 backbone: no 'blocks.N.*' tensors")
    heads = num_heads or hidden // HEAD_DIM
    swiglu = any(k.endswith("mlp.w12.weight") for k in state)
    if swiglu:
        mlp_ratio = 4  # ViT-g: the SwiGLU width is derived from 4*D (strict loading checks the shapes)
    else:
        fc1 = next((v for k, v in state.items() if k.endswith("mlp.fc1.weight")), None)
        if fc1 is None or fc1.shape[0] % hidden:
            raise InputError(source, f"MLP width {None if fc1 is None else fc1.shape[0]} is not a whole "
                                     f"multiple of the width {hidden}")
        mlp_ratio = fc1.shape[0] // hidden
    registers = state.get("register_tokens")
    if registers is not None and (registers.ndim != 3 or registers.shape[-1] != hidden):
        raise InputError(source, f"register_tokens has shape {tuple(registers.shape)}, expected (1, R, {hidden})")
    return _config(hidden, depth, max(heads, 1), mlp_ratio, patch, grid * patch, swiglu,
                   qkv_bias=any(k.endswith("attn.qkv.bias") for k in state),
                   registers=0 if registers is None else int(registers.shape[1]))


def _config(hidden: int, depth: int, heads: int, mlp_ratio: int, patch: int, image_size: int, swiglu: bool,
            qkv_bias: bool = True, registers: int = 0) -> Dinov2Config | Dinov2WithRegistersConfig:
    kwargs = dict(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads, mlp_ratio=mlp_ratio,
                  patch_size=patch, image_size=image_size, num_channels=3, qkv_bias=qkv_bias, layer_norm_eps=1e-6,
                  use_swiglu_ffn=swiglu, hidden_act="gelu")
    if registers:
        return Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs)
    return Dinov2Config(**kwargs)


def model_class(config: Dinov2Config | Dinov2WithRegistersConfig) -> type:
    """``Dinov2WithRegistersModel`` for a registers config, else ``Dinov2Model``."""
    return Dinov2WithRegistersModel if isinstance(config, Dinov2WithRegistersConfig) else Dinov2Model


def variant_config(variant: str) -> Dinov2Config | Dinov2WithRegistersConfig:
    """The config of one of Meta's released backbones: ``vits14`` ... ``vitg14``, ``vits14_reg4`` ...

    518 px (37 x 37 patches of 14 px), layer scale, 64-wide heads, SwiGLU for ViT-g,
    as ``dinov2/hub/backbones.py`` builds them.
    """
    base, _, reg = variant.partition("_reg")
    if base not in OFFICIAL_VARIANTS or reg not in ("", str(REGISTERS)):
        raise KeyError(f"unknown DINOv2 variant {variant!r}")
    width, depth, heads = OFFICIAL_VARIANTS[base]
    return _config(width, depth, heads, 4, 14, 518, swiglu=base == "vitg14", registers=int(reg or 0))


def official_shapes(config: Dinov2Config | Dinov2WithRegistersConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of an official checkpoint of the architecture ``config``.

    Built from the transformers model on the meta device (no memory) and the rename
    tables of this module, so verification and conversion share one set of rules.
    """
    with torch.device("meta"):
        model = model_class(config)(config)
    return {k: tuple(v.shape) for k, v in hf_to_official(model.state_dict()).items()}


def official_to_hf(state: dict[str, torch.Tensor], source: str | os.PathLike = "<state dict>",
                   depth: int | None = None) -> dict[str, torch.Tensor]:
    """Rename (and split) official DINOv2 tensors into the transformers layout.

    Layer-scale gammas or a mask token absent from the file (models trained
    without them) become ones / zeros, which is what the official model computes.

    Raises:
        InputError: a tensor name that no rule maps (strict: nothing is dropped silently).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
            continue
        m = _BLOCK.match(key)
        if m is None:
            raise InputError(source, f"unexpected tensor {key!r} in a DINOv2 backbone checkpoint")
        prefix, suffix = f"encoder.layer.{m.group(1)}.", m.group(2)
        if suffix in _BLOCK_RENAMES:
            out[prefix + _BLOCK_RENAMES[suffix]] = value
        elif suffix in _BLOCK_SPLITS:
            targets = _BLOCK_SPLITS[suffix]
            if value.shape[0] % len(targets):
                raise InputError(source, f"{key!r} has {value.shape[0]} rows, not divisible by {len(targets)}")
            for name, part in zip(targets, value.chunk(len(targets), dim=0), strict=True):
                out[prefix + name] = part.clone()
        else:
            raise InputError(source, f"unexpected tensor {key!r} in a DINOv2 backbone checkpoint")
    hidden = state["cls_token"].shape[-1] if "cls_token" in state else None
    if hidden is not None:
        out.setdefault("embeddings.mask_token", torch.zeros(1, hidden))
        for n in range(depth or 0):
            for ls in ("layer_scale1.lambda1", "layer_scale2.lambda1"):
                out.setdefault(f"encoder.layer.{n}.{ls}", torch.ones(hidden))
    return out


def hf_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`official_to_hf`: transformers tensors -> official names (fused qkv/w12).

    Useful to export a model in Meta's format; the tests use it for round trips.
    """
    top = {v: k for k, v in _TOP_RENAMES.items()}
    block = {v: k for k, v in _BLOCK_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        m = _LAYER.match(key)
        if m is None:
            raise KeyError(f"unexpected transformers DINOv2 tensor {key!r}")
        prefix, suffix = f"blocks.{m.group(1)}.", m.group(2)
        if suffix in block:
            out[prefix + block[suffix]] = value
            continue
        for fused, targets in _BLOCK_SPLITS.items():
            if suffix == targets[0]:
                layer = f"encoder.layer.{m.group(1)}."
                out[prefix + fused] = torch.cat([state[layer + t] for t in targets], dim=0)
                break
        else:
            if not any(suffix in t for t in _BLOCK_SPLITS.values()):
                raise KeyError(f"unexpected transformers DINOv2 tensor {key!r}")
    return out


def read_official(path: str | os.PathLike, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The official-layout backbone tensors of a DINOv2 ``.pth``, read safely (``weights_only``).

    Args:
        mmap: map the file instead of reading it (cheap key/shape checks).
    Raises:
        InputError: missing, truncated or unreadable file, pickled objects beyond tensors,
            or not a mapping of names to tensors.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise InputError(path, "weights file does not exist") from None
    except Exception as exc:  # pickle refusal or a corrupt / truncated file: one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"not a readable weights-only torch checkpoint ({first[:200]})") from None
    if not isinstance(checkpoint, dict):
        raise InputError(path, f"expected a state dict, found {type(checkpoint).__name__}")
    return unwrap_official(checkpoint, path)


def load_official_checkpoint(
        path: str | os.PathLike) -> tuple[Dinov2Config | Dinov2WithRegistersConfig, dict[str, torch.Tensor]]:
    """Read an official DINOv2 ``.pth`` safely (``weights_only``) and convert it.

    Returns:
        ``(config, state_dict)`` ready for ``model_class(config)(config).load_state_dict(state, strict=True)``.
    Raises:
        InputError: unreadable file, pickled objects beyond tensors, or not a DINOv2 backbone.
    """
    official = read_official(path)
    config = config_from_official(official, path)
    return config, official_to_hf(official, path, depth=config.num_hidden_layers)
