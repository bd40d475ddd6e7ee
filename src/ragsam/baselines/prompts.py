"""Prompt simulation for the prompted SAM / MedSAM baselines (numpy + scipy).

The paper's Table 1 compares SAM and MedSAM prompted with ``1 point``,
``3 points`` and ``BBox 0.5``. This module derives those prompts from one
organ's ground-truth mask on one 2-D slice, reproducibly from a seed.

Coordinates (both in the frame of the ``(H, W)`` mask, ``x`` = column, ``y`` = row):

* **points** are integer pixel indices ``(x, y)``; pixel ``(x, y)`` covers the
  continuous square ``[x, x+1) x [y, y+1)`` and its centre is ``(x+0.5, y+0.5)``.
* **boxes** are continuous pixel-edge coordinates ``(x0, y0, x1, y1)`` with
  ``x0 < x1``, ``y0 < y1``. The tight box of a mask covers its extreme pixels
  completely (``x0 = min x``, ``x1 = max x + 1``), so a one-pixel organ has a
  box of area 1 and IoU is the plain ratio of rectangle areas.

Rules:

``point1`` / ``point3`` (positive points "well inside" the organ)
    The Euclidean distance of every organ pixel to the nearest non-organ pixel
    centre is computed (pixels outside the image count as non-organ, so an organ
    cut by the image border is not "deep" at the border). Candidates are the
    pixels whose distance is at least half the maximum distance; ``n`` distinct
    candidates are drawn uniformly without replacement. When there are fewer
    than ``n`` candidates the remaining points are the deepest other organ pixels
    (ties broken by the seed); a mask with fewer than ``n`` pixels gives all of
    them, i.e. fewer than ``n`` points (the caller pads, see ``prompted.py``).

``box`` (a box whose IoU with the tight box equals a target, default 0.5)
    A random direction ``d ~ U(-1, 1)^4`` moves each edge of the tight box
    outwards (``d > 0``) or inwards (``d < 0``) by ``s * d * (width or height)``;
    every candidate box is clipped to the image. Starting at ``s = 0`` (IoU 1),
    ``s`` is doubled until the IoU first drops below the target and the crossing
    is then found by bisection, so the IoU equals the target to ~1e-9 (IoU is
    continuous in ``s``). If a direction never gets below the target (only
    possible when the box saturates at the image border, e.g. an organ filling
    most of the image), another direction is drawn; after 32 failures the box is
    the tight box shrunk about its centre by ``sqrt(target)`` per side, whose IoU
    is exactly the target. A target of 1 returns the tight box.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ragsam.errors import InputError

PROMPT_KINDS: tuple[str, ...] = ("point1", "point3", "box")
"""Supported prompt kinds (the rows of the paper's Table 1)."""

_MAX_DIRECTIONS = 32
_BISECTION_STEPS = 60


@dataclass(frozen=True)
class Prompt:
    """The prompt for one organ on one slice.

    Attributes:
        kind: one of :data:`PROMPT_KINDS`.
        points: int64 ``(N, 2)`` positive points ``(x, y)`` as pixel indices (``None`` for boxes);
            ``N`` is 1 or 3, or fewer when the organ has fewer pixels.
        box: float64 ``(4,)`` ``(x0, y0, x1, y1)`` in pixel-edge coordinates (``None`` for points).
    """

    kind: str
    points: np.ndarray | None = None
    box: np.ndarray | None = None


def check_prompt_kind(kind: str) -> str:
    """Return ``kind`` if it is a supported prompt kind, else raise :class:`InputError`."""
    if kind not in PROMPT_KINDS:
        raise InputError(None, f"unknown prompt kind {kind!r} (choose from {', '.join(PROMPT_KINDS)})")
    return kind


def check_box_iou(iou: float) -> float:
    """Return ``iou`` if it is a valid box IoU target in ``(0, 1]``, else raise :class:`InputError`."""
    if not (0.0 < float(iou) <= 1.0):
        raise InputError(None, f"box IoU must be in (0, 1], got {iou!r}")
    return float(iou)


def prompt_rng(seed: int, case_id: str, z: int, organ: int) -> np.random.Generator:
    """A generator that depends only on (seed, case, slice, organ).

    Prompts therefore do not change when other cases, slices or organs are
    added or processed in another order. The case id enters through its CRC-32.
    """
    if seed < 0:
        raise InputError(None, f"seed must be >= 0, got {seed}")
    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode("utf-8")), int(z), int(organ)])


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if not mask.any():
        raise ValueError("mask is empty: no prompt can be derived for an absent organ")
    return mask


def depth_map(mask: np.ndarray) -> np.ndarray:
    """Distance (pixels) of every organ pixel to the nearest non-organ pixel; 0 outside.

    Args:
        mask: bool ``(H, W)``.
    Returns:
        float64 ``(H, W)``; organ pixels are >= 1 (the image border counts as outside).
    """
    from scipy.ndimage import distance_transform_edt

    padded = np.pad(np.asarray(mask, dtype=bool), 1, constant_values=False)
    return distance_transform_edt(padded)[1:-1, 1:-1]


def inner_points(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct positive points well inside ``mask`` (rule in the module docstring).

    Args:
        mask: bool ``(H, W)`` with at least one pixel.
        n: number of points wanted (>= 1).
        rng: seeded generator.
    Returns:
        int64 ``(min(n, mask.sum()), 2)`` points ``(x, y)``; the first point is the most
        useful one only in the sense that all are equally "deep" candidates.
    """
    mask = _check_mask(mask)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    depth = depth_map(mask)
    ys, xs = np.nonzero(mask)
    d = depth[ys, xs]
    candidates = np.flatnonzero(d >= d.max() / 2.0)
    take = min(n, candidates.size)
    chosen = list(rng.choice(candidates, size=take, replace=False))
    if take < n:
        others = np.setdiff1d(np.arange(ys.size), candidates)
        others = others[rng.permutation(others.size)]
        # stable sort by depth (deepest first) after the random permutation: seeded tie-breaking
        others = others[np.argsort(-d[others], kind="stable")]
        chosen.extend(others[: n - take].tolist())
    idx = np.asarray(chosen, dtype=np.int64)
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.int64)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """The tight bounding box of ``mask`` in pixel-edge coordinates.

    Returns:
        float64 ``(4,)`` ``(min x, min y, max x + 1, max y + 1)``.
    """
    mask = _check_mask(mask)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``(x0, y0, x1, y1)`` rectangles (continuous areas; inverted boxes have area 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = area_a + area_b - inter
    return 0.0 if union <= 0.0 else inter / union


def jittered_box(mask: np.ndarray, target_iou: float, rng: np.random.Generator) -> np.ndarray:
    """A box inside the image whose IoU with the tight box of ``mask`` is ``target_iou``.

    Args:
        mask: bool ``(H, W)`` with at least one pixel.
        target_iou: in ``(0, 1]``.
        rng: seeded generator.
    Returns:
        float64 ``(4,)`` ``(x0, y0, x1, y1)`` pixel-edge coordinates within ``[0, W] x [0, H]``.
    """
    mask = _check_mask(mask)
    target = check_box_iou(target_iou)
    tight = tight_box(mask)
    if target >= 1.0:
        return tight
    height, width = mask.shape
    size = np.array([tight[2] - tight[0], tight[3] - tight[1]] * 2)
    outward = np.array([-1.0, -1.0, 1.0, 1.0])
    upper = np.array([width, height, width, height], dtype=np.float64)
    for _ in range(_MAX_DIRECTIONS):
        step = outward * rng.uniform(-1.0, 1.0, 4) * size

        def box_at(s: float, step: np.ndarray = step) -> np.ndarray:
            return np.clip(tight + s * step, 0.0, upper)

        # beyond this s every moving edge sits on the image border (saturation)
        s_saturated = float(np.max(upper / np.maximum(np.abs(step), 1e-12)))
        lo, hi = 0.0, 1.0 / 64.0
        while box_iou(tight, box_at(hi)) >= target and hi <= 2.0 * s_saturated:
            lo, hi = hi, hi * 2.0
        if box_iou(tight, box_at(hi)) >= target:
            continue  # saturated above the target: try another direction
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if box_iou(tight, box_at(mid)) >= target:
                lo = mid
            else:
                hi = mid
        return box_at(lo)
    centre = 0.5 * (tight[:2] + tight[2:])
    half = 0.5 * np.sqrt(target) * size[:2]
    return np.concatenate([centre - half, centre + half])


def make_prompt(kind: str, mask: np.ndarray, rng: np.random.Generator, box_iou_target: float = 0.5) -> Prompt:
    """The prompt of ``kind`` for one organ's mask on one slice.

    Args:
        kind: ``point1``, ``point3`` or ``box``.
        mask: bool ``(H, W)`` ground truth of the organ on this slice (non-empty).
        rng: seeded generator (see :func:`prompt_rng`).
        box_iou_target: IoU of the box prompt with the tight box (``box`` only).
    """
    check_prompt_kind(kind)
    if kind == "box":
        return Prompt(kind=kind, box=jittered_box(mask, box_iou_target, rng))
    return Prompt(kind=kind, points=inner_points(mask, 1 if kind == "point1" else 3, rng))
