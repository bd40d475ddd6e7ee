"""Position-embedding interpolation of DINOv2: Meta's rule for Meta's checkpoints.

DINOv2 learns one position embedding per patch of its 518 px training grid
(37 x 37 patches of 14 px). Any other input size resamples that grid, and the two
implementations a user can meet resample it differently:

* **Meta** (facebookresearch/dinov2, ``dinov2/models/vision_transformer.py``,
  ``DinoVisionTransformer.interpolate_pos_encoding`` at commit 112792f): the
  ``(1, M, M, D)`` grid is cast to float32 and resized with
  ``F.interpolate(mode="bicubic", antialias=A)``; with an offset ``o > 0`` it passes
  ``scale_factor=((h0 + o) / M, (w0 + o) / M)`` (``h0 = H // 14``, ``w0 = W // 14``),
  so the kernel samples at ``M / (h0 + o)``, not at ``M / h0``; with ``o = 0`` it passes
  ``size=(h0, w0)``. The result is cast back to the tokens' dtype. The hub backbones
  (``dinov2/hub/backbones.py``, commit a44758b) use ``o = 0.1, A = False`` for the models
  without registers (``dinov2_vits14`` ...) and ``o = 0.0, A = True`` for the register
  models (``dinov2_vits14_reg`` ...). At the native 37 x 37 grid nothing is resampled.
* **transformers** (``Dinov2Embeddings.interpolate_pos_encoding``, 5.24): bicubic to
  ``size=(h0, w0)`` without antialiasing; ``Dinov2WithRegistersEmbeddings`` the same with
  ``antialias=True``.

Without registers the two rules differ at ragsam's default 224 px (16 x 16 patches):
the issue measured 1 - cos ~ 1e-5 on official-format random weights, which reordered
6 of 30 top-8 neighbour lists (with strongly perturbed position embeddings 0.03, 29 of
30 lists). With registers transformers' rule is Meta's (size, antialias). ragsam therefore
computes Meta's rule whenever the weights come from Meta's ``.pth`` (and for folders
that ``ragsam weights convert`` wrote from one, which record the rule in
``config.json`` as ``ragsam_pos_interpolation``); a Hugging Face folder without that
key (e.g. ``facebook/dinov2-small``) keeps transformers' rule, which is what
transformers users get from it.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F

CONFIG_KEY = "ragsam_pos_interpolation"
META_PLAIN = {"offset": 0.1, "antialias": False}  # dinov2_vit{s,b,l,g}14 (hub/backbones.py)
META_REGISTERS = {"offset": 0.0, "antialias": True}  # dinov2_vit{s,b,l,g}14_reg


def meta_setting(num_register_tokens: int) -> dict:
    """Meta's interpolation settings for a backbone with ``num_register_tokens`` registers."""
    return dict(META_REGISTERS if num_register_tokens else META_PLAIN)


def meta_pos_encoding(pos_embed: torch.Tensor, height: int, width: int, patch: int, offset: float,
                      antialias: bool, dtype: torch.dtype) -> torch.Tensor:
    """Position embeddings for an ``height x width`` px input, resampled as Meta's model does.

    Args:
        pos_embed: ``(1, 1 + M*M, D)``, the class position first, then the M x M patch grid row-major.
        height, width: input size in pixels (the patch grid is ``height // patch`` x ``width // patch``).
        patch: patch side in pixels (14).
        offset, antialias: Meta's ``interpolate_offset`` / ``interpolate_antialias``.
        dtype: dtype of the tokens the embeddings are added to (the result is cast to it).
    Returns:
        ``(1, 1 + h0*w0, D)``; ``pos_embed`` itself when the grid is the native square one.
    """
    positions = pos_embed.shape[1] - 1
    h0, w0 = height // patch, width // patch
    if h0 * w0 == positions and height == width:
        return pos_embed
    grid = int(math.sqrt(positions))
    if grid * grid != positions:
        raise ValueError(f"{positions} patch positions are not a square grid")
    dim = pos_embed.shape[-1]
    pos = pos_embed.float()
    patches = pos[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    if offset:
        resize = {"scale_factor": (float(h0 + offset) / grid, float(w0 + offset) / grid)}
    else:
        resize = {"size": (h0, w0)}
    patches = F.interpolate(patches, mode="bicubic", antialias=antialias, **resize)
    if tuple(patches.shape[-2:]) != (h0, w0):
        raise ValueError(f"interpolated grid {tuple(patches.shape[-2:])} is not {(h0, w0)}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)
    return torch.cat((pos[:, :1], patches), dim=1).to(dtype)


def use_meta_interpolation(model: torch.nn.Module, setting: dict) -> None:
    """Make a transformers DINOv2 (with or without registers) resample its positions as Meta's model.

    The rule is bound to ``model.embeddings`` and recorded in ``model.config`` under
    :data:`CONFIG_KEY`, so ``save_pretrained`` keeps it and :func:`apply_recorded_interpolation`
    restores it when ragsam loads the folder again.
    """
    offset, antialias = float(setting["offset"]), bool(setting["antialias"])
    patch = int(model.config.patch_size)
    embeddings = model.embeddings

    def interpolate_pos_encoding(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return meta_pos_encoding(self.position_embeddings, height, width, patch, offset, antialias, tokens.dtype)

    embeddings.interpolate_pos_encoding = types.MethodType(interpolate_pos_encoding, embeddings)
    setattr(model.config, CONFIG_KEY, {"offset": offset, "antialias": antialias})


def apply_recorded_interpolation(model: torch.nn.Module) -> None:
    """Restore Meta's rule on a model loaded from a folder whose ``config.json`` records it."""
    setting = getattr(model.config, CONFIG_KEY, None)
    if isinstance(setting, dict) and {"offset", "antialias"} <= set(setting):
        use_meta_interpolation(model, setting)


def interpolation_label(model: torch.nn.Module) -> str:
    """How ``model`` resamples its position embeddings, for the embedder identity.

    ``"meta offset=0.1 antialias=False"`` / ``"meta offset=0.0 antialias=True"`` or
    ``"transformers"``.
    """
    setting = getattr(model.config, CONFIG_KEY, None)
    if isinstance(setting, dict) and {"offset", "antialias"} <= set(setting):
        return f"meta offset={float(setting['offset'])} antialias={bool(setting['antialias'])}"
    return "transformers"
