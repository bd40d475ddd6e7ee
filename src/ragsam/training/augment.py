"""Training augmentation of SAMed (``RandomGenerator``), in torch, reproducible per sample.

SAMed draws, per training slice:
  * with probability 0.5: ``rot90`` by ``k`` in {0, 1, 2, 3} quarter turns, then a flip
    along a random in-plane axis;
  * otherwise, with probability 0.5: a rotation by an integer angle in [-20, 20) degrees
    (``scipy.ndimage.rotate(order=0, reshape=False)``, zero fill);
  * otherwise nothing.
Image and label get the same geometric transform. We keep the probabilities and
the angle range, but rotate the image bilinearly and the label with nearest
neighbour (SAMed uses nearest for both) and draw a real-valued angle.

Randomness comes from a ``torch.Generator`` seeded by (run seed, epoch, position
in the epoch's sample order) - never from global state - so a resumed or
multi-process run draws exactly the same transforms as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """SAMed's augmentation settings.

    Args:
        enabled: apply augmentation to training slices.
        rot_flip_p: probability of the rot90 + flip branch.
        rotate_p: probability of the free rotation, when rot90 + flip was not drawn.
        max_angle: rotation range in degrees, ``[-max_angle, max_angle]``.
    """

    enabled: bool = True
    rot_flip_p: float = 0.5
    rotate_p: float = 0.5
    max_angle: float = 20.0


def sample_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """A generator unique to one sample draw (seed, epoch, position in epoch order)."""
    key = (int(seed) * 1_000_003 + int(epoch)) * 1_000_000_007 + int(position)
    return torch.Generator().manual_seed(key % (2**63 - 1))


def rotate(image: torch.Tensor, label: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate about the slice centre (+90 equals ``torch.rot90(k=-1)``), zero fill.

    Args:
        image: float (C, H, W); resampled bilinearly.
        label: int64 (H, W); resampled with nearest neighbour (no new ids).
        degrees: rotation angle.
    Returns:
        ``(image, label)`` with unchanged shapes and dtypes.
    """
    rad = math.radians(degrees)
    cos, sin = math.cos(rad), math.sin(rad)
    # affine_grid maps output (x, y) in [-1, 1] to input coordinates.
    theta = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0]], dtype=torch.float32).unsqueeze(0)
    h, w = label.shape
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    img = F.grid_sample(image.unsqueeze(0).float(), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0]
    lab = F.grid_sample(label.view(1, 1, h, w).float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[0, 0]
    return img.to(image.dtype), lab.round().to(label.dtype)


def rot_flip(image: torch.Tensor, label: torch.Tensor, k: int, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` quarter turns, then a flip of in-plane axis ``axis`` (0 rows, 1 columns)."""
    image = torch.flip(torch.rot90(image, k, dims=(-2, -1)), dims=(-2 + axis,))
    label = torch.flip(torch.rot90(label, k, dims=(-2, -1)), dims=(-2 + axis,))
    return image.contiguous(), label.contiguous()


def draw_transform(cfg: AugmentConfig, gen: torch.Generator) -> tuple:
    """Draw one transform: ``("rot_flip", k, axis)``, ``("rotate", degrees)`` or ``("none",)``.

    Always consumes exactly four numbers from ``gen``, whatever the branch.
    """
    u = torch.rand(4, generator=gen).tolist()
    if u[0] < cfg.rot_flip_p:
        return ("rot_flip", int(u[1] * 4) % 4, int(u[2] * 2) % 2)
    if u[1] < cfg.rotate_p:
        return ("rotate", (2.0 * u[3] - 1.0) * cfg.max_angle)
    return ("none",)


def augment_sample(image: torch.Tensor, label: torch.Tensor, cfg: AugmentConfig,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply SAMed's random transform to one slice pair.

    Args:
        image: float (C, S, S) in [0, 1].
        label: int64 (S, S).
        cfg: probabilities and angle range.
        gen: the sample's generator (see :func:`sample_generator`).
    Returns:
        The transformed ``(image, label)``.
    """
    if not cfg.enabled:
        return image, label
    kind = draw_transform(cfg, gen)
    if kind[0] == "rot_flip":
        return rot_flip(image, label, kind[1], kind[2])
    if kind[0] == "rotate":
        return rotate(image, label, kind[1])
    return image, label


def augment_batch(images: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig, seed: int,
                  epoch: int, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch; sample ``i`` uses the generator of ``(seed, epoch, positions[i])``.

    Args:
        images: float (B, C, S, S); labels: int64 (B, S, S).
    Returns:
        New tensors of the same shapes.
    """
    if not cfg.enabled:
        return images, labels
    out_i, out_l = [], []
    for i, pos in enumerate(positions):
        img, lab = augment_sample(images[i], labels[i], cfg, sample_generator(seed, epoch, pos))
        out_i.append(img)
        out_l.append(lab)
    return torch.stack(out_i), torch.stack(out_l)
