"""Resize SAM's position embeddings for a new input size (SAMed runs SAM at 512 px).

SAM is pretrained at 1024 px: a 64 x 64 patch grid, an absolute position
embedding of shape (1, 64, 64, C) and, in the global-attention blocks, relative
position tables of 2 * 64 - 1 = 127 rows per axis. At 512 px the grid is 32 x 32,
so the absolute embedding is resized to (1, 32, 32, C) and the global tables to
63 rows. Windowed blocks keep their 2 * 14 - 1 = 27 rows (their window does not
change; the 32 x 32 grid is padded to 42 x 42 = 3 x 3 windows).

Interpolation: bilinear for the absolute embedding (as SAMed does), linear for
the relative tables (the same ``F.interpolate(mode="linear")`` SAM itself uses
when a table is shorter than needed), both with ``align_corners=False``. Plain
bilinear reproduces a linear ramp exactly; bicubic would bend it at the borders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """(1, G, G, C) absolute position embedding -> (1, grid, grid, C) (bilinear)."""
    if pos_embed.shape[1] == grid and pos_embed.shape[2] == grid:
        return pos_embed
    x = pos_embed.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def resize_rel_pos(rel_pos: Tensor, length: int) -> Tensor:
    """(L, head_dim) relative position table -> (length, head_dim) (linear along L)."""
    if rel_pos.shape[0] == length:
        return rel_pos
    x = rel_pos.float().t().unsqueeze(0)  # (1, head_dim, L)
    x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x.squeeze(0).t().to(rel_pos.dtype).contiguous()


def resize_position_tensors(state_dict: dict[str, Tensor], target_shapes: dict[str, torch.Size]) -> list[str]:
    """Resize, in place, every position tensor whose shape differs from the target model's.

    Args:
        state_dict: transformers-layout weights (pretrained size).
        target_shapes: parameter shapes of the model being loaded.
    Returns:
        The keys that were resized (empty at the pretrained size: nothing changes).
    """
    resized = []
    pos = state_dict.get("vision_encoder.pos_embed")
    source_grid = int(pos.shape[1]) if pos is not None and pos.ndim == 4 else None
    for key, value in list(state_dict.items()):
        target = target_shapes.get(key)
        if target is None or tuple(value.shape) == tuple(target):
            continue
        if key.endswith("pos_embed") and value.ndim == 4 and value.shape[1:3] != target[1:3] \
                and value.shape[3] == target[3]:
            state_dict[key] = resize_pos_embed(value, int(target[1]))
            resized.append(key)
        elif (key.endswith("rel_pos_h") or key.endswith("rel_pos_w")) and value.ndim == 2 \
                and value.shape[1] == target[1] and source_grid is not None \
                and value.shape[0] == 2 * source_grid - 1:
            # only global-attention tables (2G - 1 rows) scale with the grid
            state_dict[key] = resize_rel_pos(value, int(target[0]))
            resized.append(key)
    return resized
