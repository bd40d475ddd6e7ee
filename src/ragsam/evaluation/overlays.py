"""PNG overlays of ground truth beside prediction, one per case (matplotlib, Agg canvas).

Every case is first reoriented to LPS with SimpleITK (an exact permutation /
flip of the voxels), so all cases look alike whatever their direction matrix,
and shown in radiological convention:

* axial: patient right on the viewer's left, anterior at the top;
* coronal: patient right on the left, superior at the top;
* sagittal: anterior on the left, superior at the top.

The three slices pass through the centre of the bounding box of the ground
truth's labelled voxels (of the prediction's when the ground truth is empty).
Pixels are drawn with their physical aspect ratio (mm). Each label id has a fixed
colour (:func:`label_colour`), so an organ has the same colour in every report.
The CT, when given, is shown in grey with an abdominal window; otherwise the
labels are drawn on black.

matplotlib and SimpleITK are imported inside the functions (boundary module);
no pyplot global state is touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ragsam.data.label_maps import PALETTE
from ragsam.utils.atomic import atomic_path

if TYPE_CHECKING:
    from ragsam.data.volume import Volume

#: Default CT display window in HU (the slice pipeline's abdominal window).
DEFAULT_WINDOW = (-125.0, 275.0)


def label_colour(label_id: int) -> tuple[float, float, float]:
    """The fixed RGB colour (floats in [0, 1]) of a label id >= 1."""
    if label_id < 1:
        raise ValueError(f"label id must be >= 1 (0 is background), got {label_id}")
    hexcode = PALETTE[(label_id - 1) % len(PALETTE)]
    return tuple(int(hexcode[i:i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]


def to_lps(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array reoriented to LPS, ``(z, y, x)`` = (inferior->superior, anterior->posterior,
    right->left), and its spacing in the same order (mm)."""
    import SimpleITK as sitk

    from ragsam.data.volume import to_sitk

    oriented = sitk.DICOMOrient(to_sitk(volume), "LPS")
    sx, sy, sz = oriented.GetSpacing()
    return sitk.GetArrayFromImage(oriented), (sz, sy, sx)


def _centre(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """Centre (z, y, x) of the bounding box of the labelled voxels (gt, else pred, else the volume)."""
    for mask in (gt > 0, pred > 0):
        if mask.any():
            centre = []
            for axis in range(3):
                idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
                centre.append((int(idx[0]) + int(idx[-1])) // 2)
            return tuple(centre)  # type: ignore[return-value]
    return tuple(n // 2 for n in gt.shape)  # type: ignore[return-value]


def _views(array: np.ndarray, centre: tuple[int, int, int], spacing: tuple[float, float, float]):
    """The axial, coronal and sagittal slices of an LPS ``(z, y, x)`` array, display-ready,
    with their aspect ratios (row spacing / column spacing)."""
    z, y, x = centre
    sz, sy, sx = spacing
    return [
        ("axial", array[z], sy / sx),
        ("coronal", array[::-1, y, :], sz / sx),  # superior up
        ("sagittal", array[::-1, :, x], sz / sy),  # superior up, anterior left
    ]


def _rgba(labels: np.ndarray, alpha: float) -> np.ndarray:
    """(H, W) label ids -> (H, W, 4) float RGBA; background transparent."""
    out = np.zeros((*labels.shape, 4), dtype=np.float32)
    for lid in np.unique(labels):
        if lid == 0:
            continue
        out[labels == lid] = (*label_colour(int(lid)), alpha)
    return out


def draw_overlay(gt: Volume, pred: Volume, label_names: Mapping[int, str], path: str | os.PathLike,
                 image: Volume | None = None, window: tuple[float, float] = DEFAULT_WINDOW,
                 title: str | None = None, force: bool = True, dpi: int = 80) -> Path:
    """Draw ground truth (left) and prediction (right) on axial, coronal and sagittal slices.

    Args:
        gt: ground-truth labels; ``pred`` and ``image`` must be on the same grid.
        pred: predicted labels.
        label_names: label id -> organ name (legend).
        path: output PNG (written atomically).
        image: optional CT in HU, drawn in grey under the labels.
        window: (low, high) HU display window.
        title: figure title (e.g. the case id).
        force: replace an existing ``path``.
        dpi: resolution of the PNG.
    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    for other, what in ((pred, "prediction"), (image, "image")):
        if other is not None and other.array.shape != gt.array.shape:
            raise ValueError(f"{what} {other.array.shape} is not on the ground-truth grid {gt.array.shape}")
    gt_a, spacing = to_lps(gt)
    pred_a, _ = to_lps(pred)
    ct_a = None if image is None else to_lps(image)[0]
    centre = _centre(gt_a, pred_a)
    alpha = 0.45 if ct_a is not None else 1.0
    lo, hi = window

    # Rows as tall as each view's physical height/width ratio, so thin coronal/sagittal
    # views of a short scan do not leave large gaps.
    (nz, ny, nx), (sz, sy, sx) = gt_a.shape, spacing
    ratios = [(ny * sy) / (nx * sx), (nz * sz) / (nx * sx), (nz * sz) / (ny * sy)]
    ratios = [min(max(r, 0.1), 2.0) for r in ratios]
    col_width = 4.5
    legend_h = 0.9
    fig = Figure(figsize=(2 * col_width, col_width * sum(ratios) + 1.2 + legend_h), dpi=dpi, facecolor="white",
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 2, gridspec_kw={"height_ratios": ratios})
    for col, (labels, heading) in enumerate(((gt_a, "ground truth"), (pred_a, "prediction"))):
        ct_views = _views(ct_a, centre, spacing) if ct_a is not None else [None] * 3
        for row, ((view, sl, aspect), ct_view) in enumerate(zip(_views(labels, centre, spacing), ct_views,
                                                                 strict=True)):
            ax = axes[row, col]
            if ct_view is not None:
                ax.imshow(ct_view[1], cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            else:
                ax.imshow(np.zeros(sl.shape), cmap="gray", vmin=0, vmax=1, aspect=aspect)
            ax.imshow(_rgba(sl, alpha), aspect=aspect, interpolation="nearest")
            ax.set_title(f"{heading}: {view}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            if view in ("axial", "coronal"):  # radiological convention: patient right on the viewer's left
                ax.text(0.01, 0.5, "R", transform=ax.transAxes, color="white", fontsize=9, va="center")
                ax.text(0.97, 0.5, "L", transform=ax.transAxes, color="white", fontsize=9, va="center")
            else:
                ax.text(0.01, 0.5, "A", transform=ax.transAxes, color="white", fontsize=9, va="center")
                ax.text(0.97, 0.5, "P", transform=ax.transAxes, color="white", fontsize=9, va="center")
    present = sorted((set(np.unique(gt_a).tolist()) | set(np.unique(pred_a).tolist())) - {0})
    handles = [Patch(facecolor=label_colour(int(i)), edgecolor="black",
                     label=f"{i} {label_names.get(int(i), '?')}") for i in present]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=9,
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=12)
    with atomic_path(path, force) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
