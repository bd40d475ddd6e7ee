"""Figures like the paper's: variants side by side on a central slice, Dice against LoRA rank.

matplotlib is imported inside the functions (Agg backend, no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ragsam.experiments.tables import ExperimentTable
from ragsam.utils.atomic import atomic_path


def plot_dice_against_x(table: ExperimentTable, xs: dict[str, float], x_label: str, path: Path,
                        force: bool = True) -> Path:
    """Mean Dice (ours and, where published, the paper's) against a variant number (Table 3's rank).

    Args:
        table: the plan's table.
        xs: variant name -> x value (e.g. LoRA rank); variants without one are left out.
        x_label: axis label.
        path: PNG to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    for source, style in (("ours", "o-"), ("paper", "s--")):
        points = sorted((xs[r.variant], r.values.get("mean", math.nan)) for r in table.rows
                        if r.source == source and r.variant in xs)
        points = [(x, y) for x, y in points if not math.isnan(y)]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=source)
    ax.set_xscale("log", base=2)
    values = sorted(set(xs.values()))
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.set_xlabel(x_label)
    ax.set_ylabel("mean Dice")
    ax.set_title(table.title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, force) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_variant_slices(ct_slice: np.ndarray | None, ground_truth: np.ndarray, predictions: dict[str, np.ndarray],
                        colours: dict[int, tuple[float, float, float]], names: dict[int, str], title: str,
                        path: Path, force: bool = True) -> Path:
    """One row: ground truth, then each variant's prediction, on the same central axial slice.

    Args:
        ct_slice: (H, W) image in [0, 1] drawn in grey under the labels (or None).
        ground_truth: (H, W) integer labels.
        predictions: variant name -> (H, W) integer labels.
        colours: label id -> RGB in [0, 1]; names: label id -> organ name (legend).
        path: PNG to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = [("ground truth", ground_truth), *predictions.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0), dpi=110, squeeze=False)
    for ax, (label, labels) in zip(axes[0], panels, strict=True):
        if ct_slice is not None:
            ax.imshow(ct_slice, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        rgba = np.zeros((*labels.shape, 4))
        for organ_id, colour in colours.items():
            mask = labels == organ_id
            rgba[mask, :3] = colour
            rgba[mask, 3] = 0.55
        ax.imshow(rgba, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    present = sorted({int(v) for _, lab in panels for v in np.unique(lab) if v != 0 and int(v) in colours})
    handles = [Patch(color=colours[i], label=names.get(i, str(i))) for i in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    with atomic_path(path, force) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
