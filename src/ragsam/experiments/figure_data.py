"""Pick the slices the experiment figures show (the paper's "centre slice of each scan")."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def central_slice_panels(image: Path, ground_truth: Path, predictions: dict[str, Path], label_map: Path
                         ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict, dict]:
    """The axial slice through the centre of the labelled region, in radiological (LPS) view.

    Args:
        image: the CT (file or DICOM folder); ground_truth: its labels in the plan's ids.
        predictions: variant name -> predicted label file (variants without one are left out).
        label_map: the plan's label-map JSON (organ names).
    Returns:
        ``(ct_slice in [0, 1], gt_slice, {variant: pred_slice}, colours, names)``, the
        arguments of :func:`ragsam.experiments.figures.plot_variant_slices` before ``title``.
    """
    from ragsam.data.label_maps import load_label_map
    from ragsam.data.volume import read_image, read_labels
    from ragsam.evaluation.overlays import DEFAULT_WINDOW, label_colour, to_lps

    ct = read_image(image)
    gt = read_labels(ground_truth, reference=ct)
    gt_lps, _ = to_lps(gt)
    ct_lps, _ = to_lps(ct)
    zs = np.nonzero(gt_lps.reshape(gt_lps.shape[0], -1).any(axis=1))[0]
    z = int((zs[0] + zs[-1]) // 2) if zs.size else gt_lps.shape[0] // 2
    low, high = DEFAULT_WINDOW
    ct_slice = np.clip((ct_lps[z].astype(np.float32) - low) / (high - low), 0.0, 1.0)
    preds = {}
    for name, path in predictions.items():
        if Path(path).is_file():
            preds[name] = to_lps(read_labels(path, reference=ct))[0][z]
    names = {k: v for k, v in load_label_map(str(label_map)).labels.items() if k != 0}
    colours = {k: label_colour(k) for k in names}
    return ct_slice, gt_lps[z], preds, colours, names
