"""Physical grid of a volume, and the test "do two grids hold the same voxels?".

Pure numpy (no SimpleITK at import) so that model-side code can use
:class:`Geometry`; :meth:`Geometry.from_sitk` / :meth:`Geometry.apply_to` take
SimpleITK images duck-typed.

World coordinates are LPS millimetres as in ITK/DICOM. The position of voxel
index ``i = (x, y, z)`` is ``origin + D @ (spacing * i)`` where ``D`` is the
direction matrix whose columns are the axis directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Largest position error, in voxels, under which two voxel centres count as the same voxel.
TOLERANCE_VOXELS = 1e-3


def _fmt(values: Sequence[float], digits: int = 4) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"


@dataclass(frozen=True)
class Geometry:
    """The grid of a 3-D volume (SimpleITK conventions).

    Attributes:
        size: ``(x, y, z)`` voxels (the numpy array is ``(z, y, x)``).
        spacing: ``(x, y, z)`` mm.
        origin: LPS world position of voxel ``(0, 0, 0)``'s centre, mm.
        direction: 9 floats, row-major 3x3; column ``j`` is the world direction of axis ``j``.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))
        if len(self.size) != 3 or len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError(f"Geometry needs 3 sizes, spacings, origins and 9 direction values, got {self}")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")

    # --- conversions -----------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: Any) -> Geometry:
        """The geometry of a 3-D ``SimpleITK.Image``."""
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def apply_to(self, image: Any) -> None:
        """Set spacing, origin and direction on a ``SimpleITK.Image`` of the same size."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match geometry size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    def to_json(self) -> dict[str, list[float] | list[int]]:
        """``{"size": [...], "spacing": [...], "origin": [...], "direction": [...9]}``."""
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Geometry:
        """Inverse of :meth:`to_json`."""
        return cls(tuple(d["size"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))

    # --- physical space --------------------------------------------------------------
    @property
    def direction_matrix(self) -> np.ndarray:
        """``(3, 3)`` float64; column ``j`` = world direction of index axis ``j``."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def index_to_world(self) -> np.ndarray:
        """``(3, 3)`` matrix ``D @ diag(spacing)`` mapping an index step to mm."""
        return self.direction_matrix * np.asarray(self.spacing)[None, :]

    def world(self, index_xyz: np.ndarray) -> np.ndarray:
        """World positions (mm) of continuous indices ``(..., 3)`` in ``(x, y, z)`` order."""
        return np.asarray(index_xyz, dtype=np.float64) @ self.index_to_world.T + np.asarray(self.origin)

    def corners(self) -> np.ndarray:
        """``(8, 3)`` world positions (mm) of the centres of the 8 corner voxels."""
        hi = np.asarray(self.size) - 1
        idx = np.array([[i, j, k] for i in (0, hi[0]) for j in (0, hi[1]) for k in (0, hi[2])], dtype=np.float64)
        return self.world(idx)

    def voxel_mapping_to(
        self, other: Geometry, tolerance: float = TOLERANCE_VOXELS
    ) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]] | None:
        """How to rearrange this grid's voxels into ``other``'s, if both hold the same voxels.

        Two grids hold the same voxels when every voxel centre of one coincides with a
        voxel centre of the other (to ``tolerance`` voxels over the whole grid), which
        means the index map between them is an axis permutation with flips.

        Returns:
            ``(perm, flips)`` in ``(x, y, z)`` axis order: axis ``k`` of ``other`` is axis
            ``perm[k]`` of this grid, reversed when ``flips[k]``; ``None`` when the grids
            do not hold the same voxels.
        """
        try:
            inv = np.linalg.inv(other.index_to_world)
        except np.linalg.LinAlgError:
            return None
        a = inv @ self.index_to_world  # this index -> other index (linear part)
        b = inv @ (np.asarray(self.origin) - np.asarray(other.origin))
        perm_matrix = np.round(a)
        if not np.all(np.abs(perm_matrix).sum(axis=0) == 1) or not np.all(np.abs(perm_matrix).sum(axis=1) == 1):
            return None
        extent = max(self.size)
        if np.abs(a - perm_matrix).max() * extent > tolerance:
            return None
        if np.abs(b - np.round(b)).max() > tolerance:
            return None
        perm: list[int] = [0, 0, 0]
        flips: list[bool] = [False, False, False]
        for k in range(3):
            j = int(np.argmax(np.abs(perm_matrix[k])))
            sign = perm_matrix[k, j]
            if self.size[j] != other.size[k]:
                return None
            start = int(np.round(b[k]))
            # other_k = sign * self_j + start must map [0, n-1] onto [0, n-1].
            if sign > 0 and start != 0:
                return None
            if sign < 0 and start != other.size[k] - 1:
                return None
            perm[k] = j
            flips[k] = bool(sign < 0)
        return (perm[0], perm[1], perm[2]), (flips[0], flips[1], flips[2])

    def same_voxels(self, other: Geometry, tolerance: float = TOLERANCE_VOXELS) -> bool:
        """True when both grids hold the same physical voxels (any axis order/orientation)."""
        return self.voxel_mapping_to(other, tolerance) is not None

    def describe_difference(self, other: Geometry, tolerance: float = TOLERANCE_VOXELS) -> str | None:
        """Say how two grids differ, in voxels and mm; ``None`` when they are identical.

        Identical means the same size and direction, and spacing and origin equal to
        ``tolerance`` voxels. The text names every differing attribute with both values
        (this grid first), the origin offset in mm and, when the grids are only stored
        differently, that they still hold the same voxels.
        """
        parts: list[str] = []
        if self.size != other.size:
            parts.append(f"size {'x'.join(map(str, self.size))} vs {'x'.join(map(str, other.size))} voxels")
        sp_a, sp_b = np.asarray(self.spacing), np.asarray(other.spacing)
        if np.any(np.abs(sp_a - sp_b) * np.asarray(self.size) > tolerance * sp_b):
            parts.append(f"spacing {_fmt(sp_a)} vs {_fmt(sp_b)} mm")
        d_origin = np.asarray(self.origin) - np.asarray(other.origin)
        if np.any(np.abs(d_origin) > tolerance * sp_b.min()):
            parts.append(
                f"origin {_fmt(self.origin, 6)} vs {_fmt(other.origin, 6)} mm (offset {_fmt(d_origin, 4)} mm)"
            )
        if np.abs(self.direction_matrix - other.direction_matrix).max() * max(self.size) > tolerance:
            parts.append(f"direction {_fmt(np.round(self.direction, 4), 4)} vs {_fmt(np.round(other.direction, 4), 4)}")
        if not parts:
            return None
        if self.same_voxels(other, tolerance):
            parts.append("(same physical voxels, stored in another axis order/orientation)")
        else:
            lo_a, hi_a = self.corners().min(0), self.corners().max(0)
            lo_b, hi_b = other.corners().min(0), other.corners().max(0)
            parts.append(
                f"voxel centres span {_fmt(lo_a, 5)}..{_fmt(hi_a, 5)} vs {_fmt(lo_b, 5)}..{_fmt(hi_b, 5)} mm"
            )
        return "; ".join(parts)

    def describe(self) -> str:
        """One line: size, spacing (mm) and origin (mm)."""
        return (
            f"{'x'.join(map(str, self.size))} voxels, spacing {_fmt(self.spacing)} mm, "
            f"origin {_fmt(self.origin, 6)} mm"
        )
