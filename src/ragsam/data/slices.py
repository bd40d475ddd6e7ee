"""Volumes to model-ready axial slices and back (the model boundary).

Forward (:func:`volume_to_slices`): reorient to canonical **LPS** (an exact axis
permutation/flip chosen by ``SimpleITK.DICOMOrient``), window the HU values and
scale them to [0, 1], and resize every axial slice to ``size x size`` (images
bilinear, labels nearest-exact). In the canonical array ``[z, y, x]`` row 0 is
anterior, column 0 patient-right and z increases superiorly, whatever the file's
direction matrix, so a model never sees the same anatomy mirrored.

Backward (:func:`slices_to_volume`): labels ``(Z, S, S)`` or class probabilities
``(Z, C, S, S)`` go back onto the ORIGINAL voxel grid recorded in the
:class:`SliceGrid`. Label round trips are exact when ``S`` is at least the
in-plane size; when ``S`` is smaller the volume is down-sampled, and what holds
instead is that slicing the returned volume again gives back the same slices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ragsam.data.geometry import Geometry
from ragsam.data.slice_arrays import resize_images, resize_labels, slice_channels
from ragsam.errors import InputError

if TYPE_CHECKING:
    from ragsam.data.volume import Volume

CANONICAL = "LPS"
GRID_FILE = "grid.json"  # a prepared case's SliceGrid (SliceGrid.read)
GRID_VERSIONS = (1,)
GRID_REBUILD = "rebuild the cache with `ragsam prepare --force`"


@dataclass(frozen=True)
class SliceSettings:
    """How volumes become slices.

    Attributes:
        window: ``(low, high)`` HU; values are clipped to it and scaled to [0, 1].
            The default (-125, 275) is the soft-tissue window of SAMed/TransUNet on BTCV.
        size: slices are resized to ``size x size`` pixels.
        context: 2.5D input: ``2*context+1`` neighbouring slices as channels (0 = single slice).
    """

    window: tuple[float, float] = (-125.0, 275.0)
    size: int = 512
    context: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", (float(self.window[0]), float(self.window[1])))
        if not self.window[0] < self.window[1]:
            raise InputError(None, f"HU window must be (low, high) with low < high, got {self.window!r}")
        if int(self.size) < 1 or int(self.context) < 0:
            raise InputError(None, f"slice size must be >= 1 and context >= 0, got size={self.size!r}, context={self.context!r}")

    def to_json(self) -> dict[str, Any]:
        return {"window": list(self.window), "size": int(self.size), "context": int(self.context)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SliceSettings:
        return cls(window=tuple(d["window"]), size=int(d["size"]), context=int(d.get("context", 0)))


@dataclass(frozen=True)
class SliceGrid:
    """What is needed to put slice predictions back on the original voxel grid.

    Attributes:
        geometry: the original image grid (size/spacing (x, y, z), mm, LPS origin, direction).
        orientation: DICOM orientation code of the original axes, e.g. ``"RAS"`` or ``"LPS"``.
        canonical_shape: ``(Z, Y, X)`` of the canonical LPS array before resizing.
        axes: canonical (x, y, z) axis ``k`` is original axis ``axes[k]`` ...
        flips: ... read in reverse where ``flips[k]``.
        canonical_spacing: ``(x, y, z)`` mm of the canonical array (before resizing).
        size: the slice size ``S``.
    """

    geometry: Geometry
    orientation: str
    canonical_shape: tuple[int, int, int]
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    canonical_spacing: tuple[float, float, float]
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"geometry": self.geometry.to_json(), "orientation": self.orientation,
                "canonical_shape": list(self.canonical_shape), "axes": list(self.axes),
                "flips": list(self.flips), "canonical_spacing": list(self.canonical_spacing),
                "size": self.size}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SliceGrid:
        return cls(geometry=Geometry.from_json(d["geometry"]), orientation=str(d["orientation"]),
                   canonical_shape=tuple(int(v) for v in d["canonical_shape"]),
                   axes=tuple(int(v) for v in d["axes"]), flips=tuple(bool(v) for v in d["flips"]),
                   canonical_spacing=tuple(float(v) for v in d["canonical_spacing"]), size=int(d["size"]))

    @classmethod
    def read(cls, case_dir: str | os.PathLike) -> SliceGrid:
        """``<case_dir>/grid.json`` of a prepared case: the one reader of the file.

        Written without a version key (a file without one is version 1).

        Raises:
            InputError: a missing, corrupt, newer or malformed file (one line naming it).
        """
        from ragsam.utils.formats import check_format_version, read_json_object

        path = Path(case_dir) / GRID_FILE
        d = read_json_object(path, f"missing; {GRID_REBUILD}")
        check_format_version(path, d.get("format_version"), GRID_VERSIONS, GRID_REBUILD)
        try:
            return cls.from_json(d)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"malformed slice grid ({exc!r}); {GRID_REBUILD}") from None


@dataclass
class SliceStack:
    """Axial slices of one volume: ``images`` float32 ``(Z, S, S)`` in [0, 1],
    ``labels`` uint8 ``(Z, S, S)`` or None, and the ``grid`` to map predictions back."""

    images: np.ndarray
    labels: np.ndarray | None
    grid: SliceGrid
    context: int = 0

    def model_input(self, z: int | None = None, channels: int = 3) -> np.ndarray:
        """``(C, S, S)`` for slice ``z`` (or ``(Z, C, S, S)`` for all): repeated or 2.5D neighbours."""
        if z is not None:
            return slice_channels(self.images, z, self.context, channels)
        return self.model_inputs(0, len(self.images), channels)

    def model_inputs(self, start: int, stop: int, channels: int = 3) -> np.ndarray:
        """float32 ``(stop - start, C, S, S)``: :meth:`model_input` of slices ``start..stop-1``.

        The same values as stacking :meth:`model_input` slice by slice, built with one
        gather/copy for the whole chunk (the per-slice loop costs ~5 ms per 512 px slice).
        """
        depth = len(self.images)
        start, stop = max(start, 0), min(stop, depth)
        if self.context > 0:  # 2.5D: neighbours z - c .. z + c, clamped at the volume ends
            offsets = np.arange(-self.context, self.context + 1)
            index = np.clip(np.arange(start, stop)[:, None] + offsets[None, :], 0, depth - 1)
            return self.images[index]
        return np.repeat(self.images[start:stop, None], channels, axis=1)


@dataclass
class LazySlices:
    """Model inputs of a CT volume prepared chunk by chunk (inference without a slice copy).

    Holds the canonical HU view of the image (no copy) and prepares only the slices a
    chunk needs (with its 2.5D neighbours) when asked: the same values as
    :meth:`SliceStack.model_inputs` of :func:`volume_to_slices`, without keeping the
    float32 ``(Z, S, S)`` images of the whole volume.
    """

    canon_hu: np.ndarray
    window: tuple[float, float]
    grid: SliceGrid
    context: int = 0

    def model_inputs(self, start: int, stop: int, channels: int = 3) -> np.ndarray:
        """float32 ``(stop - start, C, S, S)`` for slices ``start..stop-1`` (see :meth:`SliceStack.model_inputs`)."""
        depth = self.canon_hu.shape[0]
        start, stop = max(start, 0), min(stop, depth)
        first, last = max(start - self.context, 0), min(stop + self.context, depth)
        part = SliceStack(prepare_images(self.canon_hu[first:last], self.window, self.grid.size), None, self.grid,
                          self.context)
        if self.context == 0:
            return part.model_inputs(start - first, stop - first, channels)
        offsets = np.arange(-self.context, self.context + 1)
        index = np.clip(np.arange(start, stop)[:, None] + offsets[None, :], 0, depth - 1) - first
        return part.images[index]


def lazy_slices(image: Volume, settings: SliceSettings | None = None) -> LazySlices:
    """:class:`LazySlices` of a CT volume: what :func:`volume_to_slices` gives, prepared on demand."""
    settings = settings or SliceSettings()
    grid = make_grid(image.geometry, settings.size)
    return LazySlices(to_canonical(image.array, grid.axes, grid.flips), settings.window, grid, settings.context)


@lru_cache(maxsize=64)
def canonical_axes(direction: tuple[float, ...]) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], str]:
    """The permutation/flips that ``SimpleITK.DICOMOrient(image, "LPS")`` applies to a grid.

    Args:
        direction: 9 floats, row-major; column j is the world direction of axis j.
    Returns:
        ``(axes, flips, code)``: canonical axis ``k`` (x, y, z order) is original axis
        ``axes[k]``, reversed where ``flips[k]``; ``code`` is the original orientation
        (DICOM convention: the directions the axes increase towards).
    """
    import SimpleITK as sitk

    probe = sitk.Image(2, 2, 2, sitk.sitkUInt8)
    probe.SetDirection(tuple(float(v) for v in direction))
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(probe.GetDirection())
    turned = sitk.DICOMOrient(probe, CANONICAL)
    before = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    after = np.asarray(turned.GetDirection(), dtype=np.float64).reshape(3, 3)
    # DICOMOrient returns D' = D @ P with P a signed permutation; P = D^T D' (D orthonormal).
    p = np.rint(before.T @ after).astype(int)
    axes = tuple(int(np.argmax(np.abs(p[:, k]))) for k in range(3))
    flips = tuple(bool(p[axes[k], k] < 0) for k in range(3))
    if sorted(axes) != [0, 1, 2]:
        raise InputError(None, f"direction matrix {tuple(direction)!r} is not a rotation of the patient axes")
    return axes, flips, code


def to_canonical(array_zyx: np.ndarray, axes: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    """Rearrange an original ``(z, y, x)`` array into canonical LPS ``(Z, Y, X)`` (a view)."""
    out = array_zyx.transpose(2, 1, 0).transpose(axes)
    flip_axes = tuple(k for k in range(3) if flips[k])
    if flip_axes:
        out = np.flip(out, axis=flip_axes)
    return out.transpose(2, 1, 0)


def from_canonical(array_zyx: np.ndarray, axes: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    """Inverse of :func:`to_canonical`: canonical ``(Z, Y, X)`` back to the original ``(z, y, x)``."""
    xyz = array_zyx.transpose(2, 1, 0)
    flip_axes = tuple(k for k in range(3) if flips[k])
    if flip_axes:
        xyz = np.flip(xyz, axis=flip_axes)
    return xyz.transpose(np.argsort(axes)).transpose(2, 1, 0)


def window_hu(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip HU to ``window`` and scale linearly to [0, 1] (float32)."""
    low, high = window
    out = np.clip(np.asarray(array, dtype=np.float32), low, high)
    return (out - np.float32(low)) / np.float32(high - low)


def prepare_images(canon_hu: np.ndarray, window: tuple[float, float], size: int) -> np.ndarray:
    """Canonical HU slices ``(n, Y, X)`` -> model-ready float32 ``(n, size, size)`` in [0, 1].

    Windowed, bilinearly resized and clamped. Each slice's result depends on that slice
    alone, so a volume may be prepared whole or chunk by chunk with the same values.
    """
    return resize_images(window_hu(canon_hu, window), (size, size)).clamp_(0.0, 1.0).numpy()


def make_grid(geometry: Geometry, size: int) -> SliceGrid:
    """The :class:`SliceGrid` of a volume on ``geometry`` sliced at ``size``."""
    axes, flips, code = canonical_axes(tuple(geometry.direction))
    shape_xyz = tuple(geometry.size[a] for a in axes)
    return SliceGrid(geometry=geometry, orientation=code,
                     canonical_shape=(shape_xyz[2], shape_xyz[1], shape_xyz[0]), axes=axes, flips=flips,
                     canonical_spacing=tuple(geometry.spacing[a] for a in axes), size=int(size))


def volume_to_slices(image: Volume, labels: Volume | None = None, settings: SliceSettings | None = None) -> SliceStack:
    """Canonical, windowed, resized axial slices of a CT volume (and its labels).

    Args:
        image: CT in HU ``(z, y, x)``.
        labels: integer labels; on the image grid, or on a grid holding the same physical
            voxels (it is then brought onto the image grid exactly). Ids must be < 256.
        settings: window, slice size and 2.5D context (default :class:`SliceSettings`).
    Returns:
        :class:`SliceStack` with ``images`` float32 ``(Z, S, S)`` in [0, 1], ``labels``
        uint8 ``(Z, S, S)`` or None, and the :class:`SliceGrid`.
    Raises:
        InputError: labels on a different physical grid, or label ids above 255.
    """
    settings = settings or SliceSettings()
    grid = make_grid(image.geometry, settings.size)
    size = (grid.size, grid.size)
    canon = to_canonical(image.array, grid.axes, grid.flips)
    images = prepare_images(canon, settings.window, grid.size)
    label_slices = None
    if labels is not None:
        if labels.geometry != image.geometry:
            from ragsam.data.volume import pair_to_reference

            labels = pair_to_reference(labels, image)
        lab = np.asarray(labels.array)
        if lab.size and (int(lab.max()) > 255 or int(lab.min()) < 0):
            raise InputError(labels.path, f"label ids must be in 0..255 for slicing, found {int(lab.max())}")
        label_slices = np.ascontiguousarray(resize_labels(to_canonical(lab, grid.axes, grid.flips), size), dtype=np.uint8)
    return SliceStack(images=np.ascontiguousarray(images, dtype=np.float32), labels=label_slices, grid=grid,
                      context=settings.context)


def slices_to_volume(pred: np.ndarray | torch.Tensor, grid: SliceGrid, chunk: int = 8) -> np.ndarray:
    """Put slice predictions back on the original voxel grid.

    Args:
        pred: integer labels ``(Z, S, S)`` (resized nearest-exact), or class probabilities /
            logits ``(Z, C, S, S)`` (resized bilinearly to the canonical in-plane size, then
            argmax over C). ``Z`` must equal the canonical depth; ``S`` may be any size.
        grid: the :class:`SliceGrid` from :func:`volume_to_slices`.
        chunk: slices resized at a time (bounds memory for 512 x 512 x 14 classes).
    Returns:
        ``(z, y, x)`` labels on ``grid.geometry`` (uint8 when they fit, else the input dtype).
    """
    depth, height, width = grid.canonical_shape
    if isinstance(pred, torch.Tensor):
        # probabilities stay on their device (resized there); labels come to the CPU
        pred = pred.detach() if pred.ndim == 4 else pred.detach().cpu().numpy()
    if pred.ndim not in (3, 4) or pred.shape[0] != depth:
        raise ValueError(f"pred must be (Z, S, S) labels or (Z, C, S, S) probabilities with Z={depth}, "
                         f"got shape {tuple(pred.shape)}")
    if pred.ndim == 3:
        canon = resize_labels(np.asarray(pred), (height, width))
        if canon.size == 0 or (canon.min() >= 0 and canon.max() < 256):
            canon = canon.astype(np.uint8)
    else:
        canon = scores_to_labels(torch.as_tensor(pred), (height, width), chunk).cpu().numpy()
    return np.ascontiguousarray(from_canonical(canon, grid.axes, grid.flips))


def scores_to_labels(scores: torch.Tensor, size_hw: tuple[int, int], chunk: int = 8) -> torch.Tensor:
    """Labels of class probabilities or logits, resized bilinearly to ``size_hw`` first.

    Args:
        scores: float ``(N, C, S, S)`` (canonical slices; any device).
        size_hw: ``(H, W)`` to resize to (``align_corners=False``, antialiased when shrinking).
        chunk: slices resized at a time (bounds memory for 512 x 512 x 14 classes).
    Returns:
        ``(N, H, W)`` labels on ``scores``' device, uint8 when ``C <= 256`` (else int64). The
        result for a slice does not depend on the other slices, so a volume may be reduced
        chunk by chunk.
    """
    dtype = torch.uint8 if scores.shape[1] <= 256 else torch.int64
    # max().indices: same result as argmax (first maximum), several times faster on CPU
    parts = [resize_images(scores[i:i + chunk], size_hw).max(dim=1).indices.to(dtype)
             for i in range(0, scores.shape[0], chunk)]
    return torch.cat(parts) if parts else torch.zeros((0, *size_hw), dtype=dtype, device=scores.device)
