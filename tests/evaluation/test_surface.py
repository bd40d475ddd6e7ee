"""ragsam's NumPy/SciPy HD95 and NSD equal MONAI's, bit for bit (random masks and the real CT)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ragsam.evaluation.surface import hd95_nsd, torch_quantile


def _monai(pred: np.ndarray, gt: np.ndarray, spacing, tolerance: float, pooled: bool) -> tuple[float, float]:
    """The reference: MONAI's own functions, as ragsam called them before."""
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    from monai.metrics.utils import get_edge_surface_distance

    tp = torch.from_numpy(pred.astype(np.float32))[None, None]
    tg = torch.from_numpy(gt.astype(np.float32))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if pooled:
            _, (d_pg, d_gp), _ = get_edge_surface_distance(torch.from_numpy(pred), torch.from_numpy(gt),
                                                           spacing=spacing, symmetric=True)
            hd95 = float(np.percentile(np.concatenate([np.asarray(d_pg, np.float64), np.asarray(d_gp, np.float64)]),
                                       95))
        else:
            hd95 = float(compute_hausdorff_distance(tp, tg, include_background=True, percentile=95,
                                                    spacing=list(spacing))[0, 0])
        nsd = float(compute_surface_dice(tp, tg, [tolerance], include_background=True, spacing=list(spacing))[0, 0])
    return hd95, nsd


def test_quantile_equals_torch_quantile() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 7, 20, 101, 1000, 4097):
        for scale in (1.0, 37.3):
            v = (rng.random(n) * scale).astype(np.float32)
            for q in (0.95, 0.5, 0.0, 1.0, 0.33):
                assert torch_quantile(v, q) == float(torch.quantile(torch.from_numpy(v), q)), (n, q)


def test_random_masks_equal_monai() -> None:
    rng = np.random.default_rng(0)
    for trial in range(12):
        shape = tuple(int(s) for s in rng.integers(4, 14, size=3))
        gt = rng.random(shape) < rng.uniform(0.05, 0.6)
        pred = rng.random(shape) < rng.uniform(0.05, 0.6)
        if trial % 3 == 0:  # a blob in a corner: the crop's margin leaves the volume
            gt[:] = False
            gt[: shape[0] // 2, : shape[1] // 2, -3:] = True
        spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, size=3))
        tol = float(rng.uniform(0.5, 4.0))
        for pooled in (False, True):
            ours = hd95_nsd(pred, gt, spacing, spacing, tol, pooled)
            assert ours == _monai(pred, gt, spacing, tol, pooled), (trial, pooled)


def test_real_ct_organs_equal_monai(ct3mm) -> None:
    from ragsam.data.volume import read_labels
    from ragsam.evaluation.metrics import spacing_zyx

    vol = read_labels(ct3mm["labels"])
    gt = vol.array
    pred = np.roll(gt, shift=(1, -2, 3), axis=(0, 1, 2))  # a shifted "prediction"
    spacing = spacing_zyx(vol.geometry.spacing)
    organs = [int(o) for o in np.unique(gt) if o][:4]
    assert len(organs) == 4
    for oid in organs:
        p, g = pred == oid, gt == oid
        for pooled in (False, True):
            assert hd95_nsd(p, g, spacing, spacing, 2.0, pooled) == _monai(p, g, spacing, 2.0, pooled), oid
        aniso = (2.5, 0.8, 0.7)  # the same voxels on a typical anisotropic grid
        assert hd95_nsd(p, g, aniso, aniso, 1.5, False) == _monai(p, g, aniso, 1.5, False), oid
    # voxel units for HD95 (SAMed's numbers), mm for NSD
    p, g = pred == organs[0], gt == organs[0]
    hd_vox, nsd = hd95_nsd(p, g, spacing, (1.0, 1.0, 1.0), 3.0, True)
    assert hd_vox == _monai(p, g, (1.0, 1.0, 1.0), 3.0, True)[0]
    assert nsd == _monai(p, g, spacing, 3.0, True)[1]


def test_identical_masks_give_zero_and_one() -> None:
    m = np.zeros((5, 6, 7), bool)
    m[1:4, 2:5, 1:6] = True
    assert hd95_nsd(m, m, (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), 0.0, False) == (0.0, 1.0)


@pytest.mark.parametrize("spacing", [(3.0, 0.8, 0.8)])
def test_directed_percentiles_of_two_cubes(spacing) -> None:
    # a 4-voxel cube shifted by one slice: every surface voxel is 0 or 3 mm from the other surface
    a = np.zeros((10, 8, 8), bool)
    a[2:6, 2:6, 2:6] = True
    b = np.roll(a, 1, axis=0)
    hd, nsd = hd95_nsd(a, b, spacing, spacing, 2.9, False)
    assert hd == pytest.approx(3.0)
    assert 0.0 < nsd < 1.0
    assert hd95_nsd(a, b, spacing, spacing, 3.0, False)[1] == 1.0
