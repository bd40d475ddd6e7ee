"""Synthetic abdominal CT phantoms with BTCV organ labels (for demos and tests).

A phantom is a body ellipse (skin fat ~-100 HU around soft tissue ~40 HU, air
-1000 HU outside) holding ellipsoid organs with BTCV label ids and plausible
contrast-enhanced HU values, a spine (bone, label 0) and Gaussian noise. Organ
cross-sections change along z (ellipsoid radii taper, organs appear and
disappear), and every case jitters positions and sizes from its seed, so a
handful of phantoms is enough to train and retrieve on meaningfully.

Anatomy is laid out in the canonical LPS frame used by :mod:`ragsam.data.slices`:
array ``[z, y, x]`` has row 0 anterior, column 0 patient-right and z increasing
superior; the written files carry the identity direction (LPS), so the liver is
at patient right-anterior, the spleen left-posterior, etc., in world coordinates.
Adrenal glands and the portal/splenic vein (BTCV 10, 12, 13) are too small to be
worth modelling at phantom resolutions and are left out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ragsam.data.geometry import Geometry
from ragsam.data.volume import Volume, write_labels
from ragsam.errors import InputError
from ragsam.utils.atomic import atomic_dir, atomic_path

LAYOUTS = ("btcv", "nnunet")


@dataclass(frozen=True)
class _Organ:
    """An organ in normalised body coordinates.

    ``center``/``radii`` are in units of the half field of view (x: -1 patient right
    to +1 patient left; y: -1 anterior to +1 posterior); ``z_range`` is the relative
    height (0 = most inferior slice, 1 = most superior) where the organ exists.
    """

    label: int
    hu: float
    center: tuple[float, float]
    radii: tuple[float, float]
    z_range: tuple[float, float]
    drift: tuple[float, float] = (0.0, 0.0)  # centre shift per unit relative height
    tube: bool = False  # constant cross-section (vessels, spine) instead of an ellipsoid


# Paint order matters: later structures overwrite earlier ones where they touch.
_ANATOMY: tuple[_Organ, ...] = (
    _Organ(6, 60.0, (-0.38, -0.12), (0.42, 0.45), (0.40, 1.05), drift=(0.05, 0.0)),  # liver
    _Organ(4, 10.0, (-0.33, -0.42), (0.08, 0.10), (0.30, 0.55)),  # gallbladder
    _Organ(1, 50.0, (0.50, 0.25), (0.16, 0.20), (0.52, 0.95)),  # spleen
    _Organ(2, 150.0, (-0.35, 0.35), (0.13, 0.17), (0.10, 0.55), drift=(0.04, 0.0)),  # right kidney
    _Organ(3, 150.0, (0.35, 0.35), (0.13, 0.17), (0.15, 0.58), drift=(-0.04, 0.0)),  # left kidney
    _Organ(7, 25.0, (0.30, -0.25), (0.22, 0.18), (0.55, 0.95), drift=(-0.1, 0.05)),  # stomach
    _Organ(11, 45.0, (0.10, 0.00), (0.30, 0.07), (0.40, 0.62), drift=(0.0, -0.1)),  # pancreas
    _Organ(8, 180.0, (0.06, 0.20), (0.06, 0.06), (-0.1, 1.1), tube=True),  # aorta
    _Organ(9, 130.0, (-0.14, 0.18), (0.07, 0.05), (-0.1, 0.85), tube=True),  # inferior vena cava
    _Organ(5, 40.0, (0.10, 0.04), (0.045, 0.04), (0.78, 1.1), tube=True),  # esophagus
)
_SPINE: tuple[_Organ, ...] = (
    _Organ(0, 400.0, (0.0, 0.42), (0.12, 0.11), (-0.1, 1.1), tube=True),  # vertebral bodies
    _Organ(0, 500.0, (0.0, 0.58), (0.03, 0.08), (-0.1, 1.1), tube=True),  # spinous processes
)
_AIR_HU, _FAT_HU, _TISSUE_HU = -1000.0, -100.0, 40.0


@dataclass(frozen=True)
class PhantomStyle:
    """How one phantom departs from the default anatomy and contrast.

    The defaults reproduce :func:`make_phantom`'s cases exactly; the pre-training corpus
    (:mod:`ragsam.data.phantom_corpus`) draws other values per case.

    Attributes:
        organ_scale: multiplies every organ's radii (1.0 = default sizes).
        position_jitter: standard deviation of each organ's centre shift, in half fields of view.
        hu_offset: HU added to every organ (enhancement phase, scanner calibration).
        contrast: organ HU = hu + (contrast - 1) * (hu - 40), i.e. contrast against soft tissue.
        body_scale: multiplies the body ellipse's axes (patient size within the field of view).
    """

    organ_scale: float = 1.0
    position_jitter: float = 0.025
    hu_offset: float = 0.0
    contrast: float = 1.0
    body_scale: float = 1.0


def _jitter(organ: _Organ, rng: np.random.Generator, style: PhantomStyle) -> _Organ:
    """A seeded per-case variation of an organ's position, size, height range and HU."""
    dx, dy = rng.normal(0.0, style.position_jitter, size=2)
    sx, sy = rng.uniform(0.88, 1.12, size=2) * style.organ_scale
    dz = rng.normal(0.0, 0.03)
    hu = organ.hu + rng.normal(0.0, 5.0)
    return replace(
        organ,
        center=(organ.center[0] + dx, organ.center[1] + dy),
        radii=(organ.radii[0] * sx, organ.radii[1] * sy),
        z_range=(organ.z_range[0] + dz, organ.z_range[1] + dz),
        hu=hu + style.hu_offset + (style.contrast - 1.0) * (hu - _TISSUE_HU),
    )


def _organ_mask(organ: _Organ, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` mask of ``organ`` on normalised coordinates x (X,), y (Y,), w (Z,)."""
    lo, hi = organ.z_range
    mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    t = (w - mid) / half
    scale = np.where(np.abs(t) <= 1.0, 1.0, 0.0) if organ.tube else np.sqrt(np.clip(1.0 - t**2, 0.0, None))
    cx = organ.center[0] + organ.drift[0] * (w - mid)
    cy = organ.center[1] + organ.drift[1] * (w - mid)
    rx = np.maximum(organ.radii[0] * scale, 1e-9)[:, None, None]
    ry = np.maximum(organ.radii[1] * scale, 1e-9)[:, None, None]
    inside = ((x[None, None, :] - cx[:, None, None]) / rx) ** 2 + ((y[None, :, None] - cy[:, None, None]) / ry) ** 2
    return (inside <= 1.0) & (scale > 0)[:, None, None]


#: The largest phantom (voxels): 2**28 is 256 x 1024 x 1024, about 1 GiB per float32 array;
#: beyond it building one would exhaust memory (``--shape 100000,100000,100000``).
MAX_PHANTOM_VOXELS = 2**28


def check_phantom_grid(shape: tuple[int, ...], spacing_mm: tuple[float, ...]) -> None:
    """Refuse a shape that is not three positive sizes or too large, or a non-positive spacing."""
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(None, f"phantom shape must be three positive sizes (z, y, x), got {tuple(shape)!r}")
    voxels = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if voxels > MAX_PHANTOM_VOXELS:
        raise InputError(None, f"phantom shape {'x'.join(map(str, shape))} is {voxels:.3g} voxels; "
                               f"at most {MAX_PHANTOM_VOXELS} (e.g. 256x1024x1024)")
    if len(spacing_mm) != 3 or not all(np.isfinite(v) and v > 0 for v in spacing_mm):
        raise InputError(None, f"phantom spacing must be three positive values in mm, got {tuple(spacing_mm)!r}")


def make_phantom(
    shape: tuple[int, int, int] = (32, 96, 96),
    spacing_mm: tuple[float, float, float] = (5.0, 4.0, 4.0),
    seed: int = 0,
    noise_hu: float = 8.0,
    style: PhantomStyle | None = None,
) -> tuple[Volume, Volume]:
    """Make one synthetic abdominal CT case.

    Args:
        shape: ``(z, y, x)`` voxels; any size >= 1 (anatomy scales with the grid).
        spacing_mm: ``(z, y, x)`` voxel spacing in mm (same order as ``shape``).
        seed: case seed; the same seed gives the same case, bit for bit.
        noise_hu: standard deviation of the Gaussian noise (HU).
        style: anatomy / contrast variation (default :class:`PhantomStyle`, the demo's phantoms).
    Returns:
        ``(image, labels)``: image int16 HU ``(z, y, x)``, labels uint8 BTCV ids, both on
        the same LPS grid (identity direction, centred on the world origin).
    """
    check_phantom_grid(shape, spacing_mm)
    nz, ny, nx = (int(s) for s in shape)
    style = style or PhantomStyle()
    rng = np.random.default_rng(seed)
    x = (np.arange(nx) + 0.5) / nx * 2.0 - 1.0
    y = (np.arange(ny) + 0.5) / ny * 2.0 - 1.0
    w = np.full(1, 0.5) if nz == 1 else np.arange(nz) / (nz - 1)

    image = np.full((nz, ny, nx), _AIR_HU, dtype=np.float32)
    labels = np.zeros((nz, ny, nx), dtype=np.uint8)
    bx, by = 0.9 * rng.uniform(0.95, 1.05), 0.7 * rng.uniform(0.95, 1.05)
    bx, by = min(bx * style.body_scale, 0.98), min(by * style.body_scale, 0.92)
    body = ((x[None, :] / bx) ** 2 + ((y[:, None] - 0.05) / by) ** 2) <= 1.0
    inner = ((x[None, :] / (bx - 0.07)) ** 2 + ((y[:, None] - 0.05) / (by - 0.06)) ** 2) <= 1.0
    image[:, body] = _FAT_HU
    image[:, inner] = _TISSUE_HU
    for organ in _SPINE + tuple(_jitter(o, rng, style) for o in _ANATOMY):
        mask = _organ_mask(organ, x, y, w) & inner[None]
        image[mask] = organ.hu
        labels[mask] = organ.label
        if organ.label == 2 or organ.label == 3:  # medulla less enhanced than the cortex
            core = _organ_mask(replace(organ, radii=(organ.radii[0] * 0.55, organ.radii[1] * 0.55)), x, y, w)
            image[core & mask] = organ.hu - 50.0
        if organ.label == 7:  # a gas bubble in the anterior stomach (still labelled stomach)
            gas = _organ_mask(replace(organ, radii=(organ.radii[0] * 0.5, organ.radii[1] * 0.4),
                                      center=(organ.center[0], organ.center[1] - organ.radii[1] * 0.45)), x, y, w)
            image[gas & mask & (w[:, None, None] > 0.75)] = -850.0
    image += rng.normal(0.0, noise_hu, size=image.shape).astype(np.float32)
    image_hu = np.clip(np.round(image), -1024, 3071).astype(np.int16)

    spacing_xyz = (float(spacing_mm[2]), float(spacing_mm[1]), float(spacing_mm[0]))
    size_xyz = (nx, ny, nz)
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(size_xyz, spacing_xyz, strict=True))
    geometry = Geometry(size=size_xyz, spacing=spacing_xyz, origin=origin,
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    where = Path(f"<phantom seed={seed}>")
    return Volume(image_hu, geometry, where), Volume(labels, geometry, where)


def _case_paths(root: Path, case_id: str, layout: str) -> tuple[Path, Path]:
    if layout == "btcv":
        return root / "img" / f"img{case_id}.nii.gz", root / "label" / f"label{case_id}.nii.gz"
    if layout == "nnunet":
        return root / "imagesTr" / f"{case_id}_0000.nii.gz", root / "labelsTr" / f"{case_id}.nii.gz"
    raise InputError(None, f"unknown phantom layout {layout!r} (choose from {', '.join(LAYOUTS)})")


def write_phantom_case(
    out_dir: str | os.PathLike,
    case_id: str,
    shape: tuple[int, int, int] = (32, 96, 96),
    spacing_mm: tuple[float, float, float] = (5.0, 4.0, 4.0),
    seed: int = 0,
    layout: str = "btcv",
    force: bool = False,
    noise_hu: float = 8.0,
    style: PhantomStyle | None = None,
) -> tuple[Path, Path]:
    """Write one phantom case (int16 NIfTI image + uint8 NIfTI labels) in a dataset layout.

    ``btcv`` writes ``img/img<id>.nii.gz`` + ``label/label<id>.nii.gz``; ``nnunet`` writes
    ``imagesTr/<id>_0000.nii.gz`` + ``labelsTr/<id>.nii.gz``. Each file is written atomically.
    ``noise_hu`` and ``style`` are passed to :func:`make_phantom`.

    Returns:
        ``(image_path, label_path)``.
    Raises:
        OutputExistsError: a file exists and ``force`` is false.
    """
    import SimpleITK as sitk

    image, labels = make_phantom(shape, spacing_mm, seed, noise_hu, style)
    image_path, label_path = _case_paths(Path(out_dir), case_id, layout)
    sitk_image = sitk.GetImageFromArray(image.array)
    image.geometry.apply_to(sitk_image)
    with atomic_path(image_path, force) as tmp:
        sitk.WriteImage(sitk_image, str(tmp), useCompression=True)
    write_labels(labels.array, labels.geometry, label_path, force=force)
    return image_path, label_path


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    n_cases: int = 4,
    layout: str = "btcv",
    seed: int = 0,
    shape: tuple[int, int, int] = (32, 96, 96),
    spacing_mm: tuple[float, float, float] = (5.0, 4.0, 4.0),
    force: bool = False,
) -> Path:
    """Write ``n_cases`` different phantoms as a dataset folder that ``discover_cases`` reads.

    Case ``i`` (0-based) uses seed ``seed * 100_003 + i``; BTCV case ids are ``0001``...,
    nnU-Net ones ``phantom_001``... (with a ``dataset.json`` naming the 14 BTCV labels).
    The folder is built next to ``out_dir`` and moved into place when complete.

    Returns:
        ``out_dir``.
    Raises:
        OutputExistsError: ``out_dir`` exists and is not empty, and ``force`` is false.
        InputError: ``n_cases < 1`` or an unknown layout.
    """
    if n_cases < 1:
        raise InputError(None, f"phantom dataset needs at least one case, got n_cases={n_cases}")
    check_phantom_grid(shape, spacing_mm)
    if layout not in LAYOUTS:
        raise InputError(None, f"unknown phantom layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    out = Path(out_dir)
    empty_dir = out.is_dir() and not any(out.iterdir())
    with atomic_dir(out, force=force or empty_dir) as tmp:
        for i in range(n_cases):
            case_id = f"{i + 1:04d}" if layout == "btcv" else f"phantom_{i + 1:03d}"
            write_phantom_case(tmp, case_id, shape, spacing_mm, seed * 100_003 + i, layout, force=False)
        if layout == "nnunet":
            from ragsam.data.label_maps import load_label_map

            # all 14 BTCV ids (nnU-Net wants consecutive labels; absent organs are allowed)
            names = load_label_map("btcv").labels
            meta = {
                "name": "ragsam phantom",
                "channel_names": {"0": "CT"},
                "labels": {name: idx for idx, name in names.items()},
                "numTraining": n_cases,
                "file_ending": ".nii.gz",
            }
            (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
