"""Array operations on slices shared by slicing (:mod:`ragsam.data.slices`) and the training dataset
(:mod:`ragsam.data.slice_dataset`), numpy + torch only (no SimpleITK).

Labels are resized by the *nearest-exact* rule computed in integer arithmetic, so
upsampling then downsampling is exactly the identity; images bilinearly. 2.5D model
inputs stack a slice's neighbours (clamped at the volume ends).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def nearest_exact_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output sample for nearest-exact resampling along one axis.

    Output sample ``i`` takes input ``floor((i + 0.5) * n_in / n_out)``, the rule of
    ``torch.nn.functional.interpolate(mode="nearest-exact")``, evaluated here in integer
    arithmetic so it never suffers float rounding. With ``n_out >= n_in``, resampling
    ``n_in -> n_out -> n_in`` returns the input exactly (and ``n_out -> n_in -> n_out``
    is exact when ``n_out < n_in``).

    Returns:
        int64 ``(n_out,)`` indices in ``[0, n_in)``.
    """
    return (2 * np.arange(n_out, dtype=np.int64) + 1) * n_in // (2 * n_out)


def resize_labels(labels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-exact resize of the last two axes of an integer array ``(..., H, W) -> (..., h, w)``."""
    h, w = size_hw
    if labels.shape[-2:] == (h, w):
        return labels
    rows = nearest_exact_indices(labels.shape[-2], h)
    cols = nearest_exact_indices(labels.shape[-1], w)
    return labels[..., rows[:, None], cols[None, :]]


def resize_images(images: np.ndarray | torch.Tensor, size_hw: tuple[int, int], chunk: int = 32) -> torch.Tensor:
    """Bilinear resize of ``(N, H, W)`` or ``(N, C, H, W)`` float images to ``(.., h, w)``.

    Uses ``align_corners=False`` (pixel areas map onto pixel areas) and antialiasing
    when shrinking, so a 512 -> 128 reduction averages instead of skipping pixels.
    Processed in chunks of ``chunk`` along N to bound memory.

    Returns:
        float32 tensor of the same leading shape.
    """
    x = torch.as_tensor(images)
    x = x.float()
    if tuple(x.shape[-2:]) == tuple(size_hw):
        return x
    squeeze = x.ndim == 3
    if squeeze:
        x = x[:, None]
    shrink = size_hw[0] < x.shape[-2] or size_hw[1] < x.shape[-1]
    parts = [F.interpolate(x[i:i + chunk], size=tuple(size_hw), mode="bilinear", align_corners=False,
                           antialias=shrink) for i in range(0, x.shape[0], chunk)]
    out = torch.cat(parts) if parts else x.new_zeros((0, x.shape[1], *size_hw))
    return out[:, 0] if squeeze else out


def neighbour_indices(z: int, depth: int, context: int) -> list[int]:
    """Slice indices ``z - context .. z + context``, clamped to ``[0, depth - 1]`` (2.5D input)."""
    return [min(max(z + d, 0), depth - 1) for d in range(-context, context + 1)]


def slice_channels(images: np.ndarray, z: int, context: int = 0, channels: int = 3) -> np.ndarray:
    """Model input for slice ``z`` of ``images (Z, S, S)``: ``(C, S, S)``.

    ``C = channels`` copies of the slice when ``context == 0``, else the ``2*context+1``
    neighbouring slices (clamped at the volume ends), inferior first.
    """
    if context > 0:
        return np.stack([images[i] for i in neighbour_indices(z, images.shape[0], context)])
    return np.repeat(images[z][None], channels, axis=0)
