"""Meta's own DINOv2 computation, for parity tests of ragsam's DINOv2 path.

The reference is Meta's ``DinoVisionTransformer`` from the PyPI package ``dinov2``
0.0.1.dev2 (FAIR's April 2023 release of facebookresearch/dinov2; installed with
``--no-deps`` by the Makefile, it imports with torch alone: without xFormers its
``MemEffAttention`` runs the plain attention). That release predates register tokens,
so for the ``*_reg4`` checkpoints :func:`meta_features` adds what the newest Meta code
(facebookresearch/dinov2 ``dinov2/models/vision_transformer.py`` at 112792f, hub
settings in ``dinov2/hub/backbones.py`` at a44758b) does differently, around Meta's own
patch embedding, blocks and norm: position embeddings resampled with
``size=(h0, w0)``, bicubic, ``antialias=True`` (``interpolate_offset=0.0``), added before
the R register tokens are inserted between the class token and the patches; the patch
tokens are the last ``h0 * w0`` tokens.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from dinov2.models import vision_transformer as meta_vits

from ragsam.data.phantom import make_phantom


def meta_backbone(seed: int, width: int = 128, depth: int = 2, perturb: float = 0.2,
                  registers: int = 0) -> tuple[meta_vits.DinoVisionTransformer, dict[str, torch.Tensor]]:
    """Meta's ViT/14 at 518 px (37 x 37 grid, layer scale, 64-wide heads) with seeded random weights.

    Every tensor gets Gaussian noise (``perturb``; ``0.5`` for ``pos_embed``) so that the
    resampling of the position embeddings and every block change the output.

    Returns:
        ``(model, state)``; ``state`` is the official-format state dict (``register_tokens``
        ``(1, R, D)`` added when ``registers``), what ``torch.save`` writes as a ``.pth``.
    """
    torch.manual_seed(seed)
    model = meta_vits.DinoVisionTransformer(
        img_size=518, patch_size=14, embed_dim=width, depth=depth, num_heads=width // 64, mlp_ratio=4,
        init_values=1.0, block_chunks=0, block_fn=partial(meta_vits.Block, attn_class=meta_vits.MemEffAttention),
    ).eval()
    noise = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=noise) * (0.5 if name == "pos_embed" else perturb))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if registers:
        state["register_tokens"] = torch.randn(1, registers, width, generator=noise)
    return model, state


@torch.no_grad()
def meta_features(model: meta_vits.DinoVisionTransformer, pixels: torch.Tensor,
                  register_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's ``x_norm_clstoken`` ``(B, D)`` and ``x_norm_patchtokens`` ``(B, h0*w0, D)``.

    Without registers this is Meta's own ``forward_features``; with ``register_tokens``
    ``(1, R, D)`` see the module docstring.
    """
    if register_tokens is None:
        out = model.forward_features(pixels)
        return out["x_norm_clstoken"], out["x_norm_patchtokens"]
    b, _, h, w = pixels.shape
    tokens = model.patch_embed(pixels)
    tokens = torch.cat((model.cls_token.expand(b, -1, -1), tokens), dim=1)
    pos = model.pos_embed.float()
    grid = int(math.sqrt(pos.shape[1] - 1))
    h0, w0 = h // model.patch_size, w // model.patch_size
    if (h0, w0) != (grid, grid):
        patches = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(h0, w0), mode="bicubic", antialias=True)
        pos = torch.cat((pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)), dim=1)
    tokens = tokens + pos.to(tokens.dtype)
    tokens = torch.cat((tokens[:, :1], register_tokens.expand(b, -1, -1), tokens[:, 1:]), dim=1)
    for block in model.blocks:
        tokens = block(tokens)
    normed = model.norm(tokens)
    return normed[:, 0], normed[:, 1 + register_tokens.shape[1]:]


def ct_slices(cases: int = 6, per_case: int = 5) -> np.ndarray:
    """``(cases * per_case, 96, 96)`` float32 phantom CT slices in [0, 1] (window -125..275 HU).

    Every 7th slice of ``cases`` phantom cases: similar slices (the same anatomy at nearby
    levels, the same level in other cases) whose nearest-neighbour lists are not trivial.
    """
    out = []
    for case in range(cases):
        image, _ = make_phantom(shape=(40, 96, 96), seed=100 + case)
        out.append(np.clip((image.array[5:40:7][:per_case].astype(np.float32) + 125.0) / 400.0, 0.0, 1.0))
    return np.concatenate(out)


def top_k(vectors: np.ndarray, k: int = 8) -> tuple[np.ndarray, float]:
    """Each row's ``k`` nearest other rows by inner product, and the smallest gap between
    consecutive similarities among the first ``k + 1`` (how far the lists are from a tie)."""
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")
    ranked = np.take_along_axis(sim, order, axis=1)[:, :k + 1]
    return order[:, :k], float(np.diff(-ranked, axis=1).min())
