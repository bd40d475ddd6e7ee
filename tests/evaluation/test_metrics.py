"""Dice / HD95 / NSD against hand-computed numbers and an independent brute-force reference."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ragsam.data.label_maps import load_label_map
from ragsam.errors import InputError
from ragsam.evaluation.metrics import (
    compute_case_metrics,
    compute_organ_metrics,
    grid_diagonal_mm,
    nsd_tolerances,
    spacing_zyx,
)


def _cube(shape=(12, 10, 10), z=(2, 6)) -> np.ndarray:
    """A 4x4x4 cube (z from z[0] to z[1]-1, y and x 2..5)."""
    a = np.zeros(shape, dtype=np.uint8)
    a[z[0]:z[1], 2:6, 2:6] = 1
    return a


def _edges(mask: np.ndarray) -> np.ndarray:
    """Surface voxels by definition: in the mask with a 6-neighbour outside it (or outside the array)."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask, dtype=bool)
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def _directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) of each surface voxel of ``a`` to the nearest surface voxel of ``b`` (all pairs)."""
    pa = np.argwhere(_edges(a)) * np.asarray(spacing)
    pb = np.argwhere(_edges(b)) * np.asarray(spacing)
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(1)


def test_dice_of_two_boxes_by_hand() -> None:
    # A: x 0..9 (10 voxels), B: x 6..13 (8 voxels) on one row -> overlap x 6..9 = 4 voxels.
    a = np.zeros((1, 1, 20), np.uint8)
    b = np.zeros((1, 1, 20), np.uint8)
    a[0, 0, 0:10] = 1
    b[0, 0, 6:14] = 1
    m = compute_organ_metrics(b, a, (1.0, 1.0, 1.0))
    assert m.dice == pytest.approx(2 * 4 / (10 + 8))
    assert (m.gt_voxels, m.pred_voxels) == (10, 8)
    # same value as MONAI's compute_dice on one-hot tensors
    from monai.metrics import compute_dice

    t = lambda x: torch.from_numpy(x.astype(np.float32))[None, None]  # noqa: E731
    assert float(compute_dice(t(b), t(a))[0, 0]) == pytest.approx(m.dice)


def test_hd95_and_nsd_of_shifted_cubes_with_anisotropic_spacing() -> None:
    # Cube shifted by 2 slices along z, z spacing 3 mm (array order z, y, x).
    gt, pred = _cube(z=(2, 6)), _cube(z=(4, 8))
    spacing = spacing_zyx((1.0, 1.0, 3.0))  # Geometry order (x, y, z) -> (z, y, x)
    assert spacing == (3.0, 1.0, 1.0)
    m = compute_organ_metrics(pred, gt, spacing, nsd_tolerance_mm=1.0)
    assert m.dice == pytest.approx(2 * 32 / 128)
    # Farthest surface layer is 2 slices * 3 mm away and holds 16 of 56 surface voxels (> 5 %).
    assert m.hd95 == pytest.approx(6.0)
    # Surface of each cube: 56 voxels. Distances pred->gt: 24 at 0 mm, 4 at 1 mm (inner voxels of
    # the overlapping bottom face, 1 mm from the gt ring), 12 at 3 mm, 16 at 6 mm; symmetric.
    assert m.nsd == pytest.approx(28 / 56)
    assert compute_organ_metrics(pred, gt, spacing, nsd_tolerance_mm=3.0).nsd == pytest.approx(40 / 56)
    assert compute_organ_metrics(pred, gt, spacing, nsd_tolerance_mm=5.9).nsd == pytest.approx(40 / 56)
    assert compute_organ_metrics(pred, gt, spacing, nsd_tolerance_mm=6.0).nsd == pytest.approx(1.0)
    # Wrong axis order (x, y, z given as z, y, x) would claim a 2 mm distance.
    assert compute_organ_metrics(pred, gt, (1.0, 1.0, 3.0)).hd95 == pytest.approx(2.0)


def test_hd95_strict_is_max_of_directed_percentiles_samed_pools_them() -> None:
    # GT: a slab; prediction: the slab plus a far-away blob, so the two directions differ.
    gt = np.zeros((10, 8, 14), np.uint8)
    gt[2:7, 2:6, 2:6] = 1
    pred = gt.copy()
    pred[3:6, 3:5, 10:13] = 1  # a spurious blob 5..7 mm from the slab along x
    spacing = (2.0, 1.0, 1.0)
    d_pg, d_gp = _directed(pred > 0, gt > 0, spacing), _directed(gt > 0, pred > 0, spacing)
    strict = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    pooled = np.percentile(np.concatenate([d_pg, d_gp]), 95)
    assert strict != pytest.approx(pooled)
    assert compute_organ_metrics(pred, gt, spacing, absent="strict").hd95 == pytest.approx(strict, rel=1e-5)
    assert compute_organ_metrics(pred, gt, spacing, absent="samed").hd95 == pytest.approx(pooled, rel=1e-5)
    # SAMed's medpy call uses no spacing: voxel units
    d_pg1, d_gp1 = _directed(pred > 0, gt > 0, (1, 1, 1)), _directed(gt > 0, pred > 0, (1, 1, 1))
    vox = compute_organ_metrics(pred, gt, spacing, absent="samed", hd95_units="voxels").hd95
    assert vox == pytest.approx(np.percentile(np.concatenate([d_pg1, d_gp1]), 95), rel=1e-5)


def test_surface_at_the_array_border_counts() -> None:
    # An organ filling the whole array: every voxel on the array faces is surface.
    gt = np.ones((3, 4, 4), np.uint8)
    pred = gt.copy()
    pred[2] = 0  # prediction misses the top slice (1 mm)
    m = compute_organ_metrics(pred, gt, (1.0, 1.0, 1.0), nsd_tolerance_mm=0.5)
    d_pg, d_gp = _directed(pred > 0, gt > 0, (1, 1, 1)), _directed(gt > 0, pred > 0, (1, 1, 1))
    assert m.nsd == pytest.approx(((d_pg <= 0.5).sum() + (d_gp <= 0.5).sum()) / (d_pg.size + d_gp.size))
    assert m.dice == pytest.approx(2 * 32 / (32 + 48))


def test_absent_rules_strict() -> None:
    gt, empty = _cube(), np.zeros((12, 10, 10), np.uint8)
    spacing = (3.0, 1.0, 1.0)
    diag = math.sqrt((11 * 3.0) ** 2 + 9.0**2 + 9.0**2)
    assert grid_diagonal_mm(gt.shape, spacing) == pytest.approx(diag)
    missed = compute_organ_metrics(empty, gt, spacing)
    assert (missed.dice, missed.nsd, missed.hd95) == (0.0, 0.0, pytest.approx(diag))
    false_pos = compute_organ_metrics(gt, empty, spacing)
    assert (false_pos.dice, false_pos.nsd, false_pos.hd95) == (0.0, 0.0, pytest.approx(diag))
    both = compute_organ_metrics(empty, empty, spacing)
    assert all(math.isnan(v) for v in (both.dice, both.hd95, both.nsd))
    assert (both.gt_voxels, both.pred_voxels) == (0, 0)


def test_absent_rules_samed() -> None:
    gt, empty = _cube(), np.zeros((12, 10, 10), np.uint8)
    spacing = (3.0, 1.0, 1.0)
    m = compute_organ_metrics(empty, gt, spacing, absent="samed")
    assert (m.dice, m.hd95, m.nsd) == (0.0, 0.0, 0.0)
    m = compute_organ_metrics(gt, empty, spacing, absent="samed")
    assert (m.dice, m.hd95, m.nsd) == (1.0, 0.0, 1.0)
    m = compute_organ_metrics(empty, empty, spacing, absent="samed")
    assert (m.dice, m.hd95, m.nsd) == (0.0, 0.0, 0.0)


def test_case_metrics_per_organ_on_label_volumes() -> None:
    gt = np.zeros((12, 10, 10), np.uint8)
    gt[2:6, 2:6, 2:6] = 1
    gt[8:10, 6:9, 6:9] = 3
    pred = np.zeros_like(gt)
    pred[2:6, 2:6, 2:6] = 1
    pred[8:10, 6:9, 6:8] = 3  # 12 of the 18 gt voxels
    rows = compute_case_metrics(pred, gt, (3.0, 1.0, 1.0), [1, 2, 3], nsd_tolerance_mm={1: 1.0, 2: 1.0, 3: 2.0})
    assert [r.organ_id for r in rows] == [1, 2, 3]
    assert (rows[0].dice, rows[0].hd95, rows[0].nsd) == (1.0, 0.0, 1.0)
    assert math.isnan(rows[1].dice)
    assert rows[2].dice == pytest.approx(2 * 12 / 30)
    assert rows[2].hd95 == pytest.approx(1.0)  # the missing x column is 1 mm from the prediction's face
    assert rows[2].nsd == pytest.approx(1.0) and rows[2].nsd_tolerance_mm == 2.0
    with pytest.raises(ValueError, match="background"):
        compute_case_metrics(pred, gt, (1, 1, 1), [0])


def test_nsd_tolerances() -> None:
    names = {1: "spleen", 2: "right kidney", 6: "liver", 9: "inferior vena cava", 10: "portal vein and splenic vein"}
    assert nsd_tolerances(names, "flare22") == {1: 3.0, 2: 3.0, 6: 5.0, 9: 2.0, 10: 2.0}
    # the FLARE22 label map gets exactly the official per-organ values (FLARE22_DSC_NSD_Eval.py)
    flare = {i: n for i, n in load_label_map("flare22").labels.items() if i}
    assert nsd_tolerances(flare, "flare22") == {1: 5.0, 2: 3.0, 3: 3.0, 4: 5.0, 5: 2.0, 6: 2.0, 7: 2.0, 8: 2.0,
                                                9: 2.0, 10: 3.0, 11: 5.0, 12: 7.0, 13: 3.0}
    assert nsd_tolerances(names, 1.5) == dict.fromkeys(names, 1.5)
    assert nsd_tolerances(names, "2") == dict.fromkeys(names, 2.0)
    with pytest.raises(InputError, match="'flair'"):
        nsd_tolerances(names, "flair")
    with pytest.raises(InputError, match="-1"):
        nsd_tolerances(names, -1.0)
    with pytest.raises(InputError, match="'sloppy'"):
        compute_organ_metrics(_cube(), _cube(), (1, 1, 1), absent="sloppy")  # type: ignore[arg-type]


def test_case_metrics_equal_full_volume_organ_metrics() -> None:
    # The per-organ bounding-box crop must not change anything, also for organs touching the border.
    rng = np.random.default_rng(0)
    gt = np.zeros((9, 12, 11), np.uint8)
    gt[0:4, 0:5, 3:9] = 1  # touches three array faces
    gt[5:9, 6:12, 0:4] = 2
    gt[3:6, 2:9, 6:11] = 4
    pred = gt.copy()
    flips = rng.random(gt.shape) < 0.08
    pred[flips] = rng.integers(0, 5, size=int(flips.sum()))
    spacing = (2.5, 0.7, 0.9)
    for absent in ("strict", "samed"):
        rows = compute_case_metrics(pred, gt, spacing, [1, 2, 3, 4], 1.0, absent)
        for r in rows:
            full = compute_organ_metrics(pred == r.organ_id, gt == r.organ_id, spacing, r.organ_id, 1.0, absent)
            assert dataclasses.astuple(r) == pytest.approx(dataclasses.astuple(full), nan_ok=True)
