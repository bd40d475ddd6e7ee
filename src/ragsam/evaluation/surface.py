"""Surface distances, HD95 and NSD with NumPy and SciPy alone, value for value MONAI's.

``import monai.metrics`` imports the whole of MONAI (networks, transformers' BERT:
tens of seconds on a loaded machine, several on a quiet one) for three small
computations. This module repeats them, operation for operation and in the same
float32 arithmetic, so ``ragsam evaluate`` starts in a fraction of the time; the
tests compare every value with MONAI 1.6 (``compute_hausdorff_distance``,
``compute_surface_dice``, ``get_edge_surface_distance``) bit for bit.

MONAI's path for two non-empty boolean masks ``(z, y, x)``:

1. crop both to the bounding box of ``pred | gt`` with a one-voxel margin (zero
   padding where the margin leaves the volume);
2. surfaces: ``scipy.ndimage.binary_erosion(mask) ^ mask`` (6-connected erosion,
   outside = background);
3. directed distances: for each surface voxel of one mask, the Euclidean distance in
   mm to the nearest surface voxel of the other (a KD-tree over voxel coordinates
   scaled by the spacing), stored as float32;
4. HD95: the larger of the two directed 95th percentiles (``torch.quantile``: linear
   interpolation, in float32); NSD: the fraction of both surfaces within the
   tolerance (``<=``, in float32).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TORCH_FLOAT = np.float32  # MONAI's distance tensors and results


def crop_origin(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Voxel index of MONAI's crop corner: the union's bounding-box start minus one, per axis."""
    union = pred | gt
    starts = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        starts.append(int(np.flatnonzero(union.any(axis=other))[0]) - 1)
    return np.asarray(starts, dtype=np.int64)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of a boolean mask: the voxels that a 6-connected erosion removes."""
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask) ^ mask


def directed_distances(from_edges: np.ndarray, to_edges: np.ndarray, origin: np.ndarray,
                       spacing: Sequence[float]) -> np.ndarray:
    """float32 distances (mm) from each ``from_edges`` voxel to the nearest ``to_edges`` voxel.

    Voxel coordinates are taken relative to ``origin`` (MONAI's crop corner) before
    scaling, so the float64 arithmetic is MONAI's to the last bit.
    """
    from scipy.spatial import KDTree

    scale = np.asarray(spacing, dtype=np.float64)
    to_xyz = (np.argwhere(to_edges) - origin).astype(np.float64) * scale
    from_xyz = (np.argwhere(from_edges) - origin).astype(np.float64) * scale
    return KDTree(to_xyz, leafsize=32).query(from_xyz, k=1)[0].astype(TORCH_FLOAT)


def torch_quantile(values: np.ndarray, q: float) -> float:
    """``torch.quantile(values, q)`` of a 1-D float32 array, reproduced in float32.

    torch: ``rank = q * (n - 1)`` (float32), the two neighbouring sorted values and
    ``torch.lerp`` between them (``a + w (b - a)`` for ``w < 0.5``, else ``b - (b - a)(1 - w)``).
    """
    v = np.sort(np.asarray(values, dtype=TORCH_FLOAT))
    rank = TORCH_FLOAT(q) * TORCH_FLOAT(v.size - 1)
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    w = TORCH_FLOAT(rank - TORCH_FLOAT(lo))
    a, b = v[lo], v[hi]
    if w < TORCH_FLOAT(0.5):
        return float(a + w * (b - a))
    return float(b - (b - a) * (TORCH_FLOAT(1.0) - w))


def edge_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(pred -> gt, gt -> pred)`` float32 surface distances (mm) of two non-empty boolean masks."""
    origin = crop_origin(pred, gt)
    # Erosion needs the crop's one-voxel margin only where it exists: outside the
    # volume counts as background either way, so the clipped crop gives MONAI's surfaces.
    lo = np.maximum(origin, 0)
    hi = []
    union = pred | gt
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hi.append(min(int(np.flatnonzero(union.any(axis=other))[-1]) + 2, union.shape[axis]))
    box = tuple(slice(int(a), b) for a, b in zip(lo, hi, strict=True))
    edges_p, edges_g = surface_voxels(pred[box]), surface_voxels(gt[box])
    shift = origin - lo  # coordinates in the clipped crop -> relative to MONAI's corner
    return (directed_distances(edges_p, edges_g, shift, spacing),
            directed_distances(edges_g, edges_p, shift, spacing))


def hd95_nsd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], hd_spacing: Sequence[float],
             tolerance_mm: float, pooled: bool) -> tuple[float, float]:
    """HD95 (in ``hd_spacing`` units) and NSD (at ``tolerance_mm``, with ``spacing``) of two
    non-empty boolean masks ``(z, y, x)``.

    ``pooled``: medpy's HD95 (95th percentile of both directions pooled, ``np.percentile``
    in float64) instead of MONAI's larger directed one.
    """
    d_pg, d_gp = edge_distances(pred, gt, hd_spacing)
    if pooled:
        hd95 = float(np.percentile(np.concatenate([d_pg.astype(np.float64), d_gp.astype(np.float64)]), 95))
    else:
        hd95 = max(torch_quantile(d_pg, 0.95), torch_quantile(d_gp, 0.95))
    if tuple(hd_spacing) != tuple(spacing):
        d_pg, d_gp = edge_distances(pred, gt, spacing)
    tol = TORCH_FLOAT(tolerance_mm)
    correct = int(np.count_nonzero(d_pg <= tol)) + int(np.count_nonzero(d_gp <= tol))
    nsd = float(TORCH_FLOAT(correct) / TORCH_FLOAT(d_pg.size + d_gp.size))
    return hd95, nsd
