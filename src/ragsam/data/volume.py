"""Volumes on a physical grid: reading, pairing by geometry and writing (SimpleITK boundary).

A :class:`Volume` is a numpy array in SimpleITK order ``(z, y, x)`` plus the
:class:`Geometry` that places every voxel in LPS world coordinates (mm).
Images are returned as float32 Hounsfield units; labels as non-negative integers.

Labels are paired with their image by physical position, never by array index:
:func:`read_labels` with a ``reference`` accepts a label file whose grid holds
the same voxels as the image (possibly stored with another axis order, flipped
axes and the matching origin) and permutes/flips it onto the image grid, which is
exactly nearest-neighbour resampling when voxel centres coincide. Grids that do
not hold the same voxels are refused with a message saying how they differ.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ragsam.data.dicom import read_dicom_series
from ragsam.data.file_checks import MAX_VOXELS, check_finite, check_image_file
from ragsam.data.geometry import Geometry
from ragsam.data.label_maps import label_dtype
from ragsam.errors import InputError
from ragsam.utils.atomic import atomic_path
from ragsam.utils.native_output import captured_native_output

__all__ = [
    "Geometry",
    "Volume",
    "from_sitk",
    "read_image",
    "read_labels",
    "to_sitk",
    "write_labels",
]


@dataclass
class Volume:
    """An array on a physical grid.

    Attributes:
        array: ``(z, y, x)`` as ``sitk.GetArrayFromImage``; images float32 HU, labels integer >= 0.
        geometry: where the voxels are (mm, LPS).
        path: the file or DICOM folder it came from (used in messages).
    """

    array: np.ndarray
    geometry: Geometry
    path: Path

    def __post_init__(self) -> None:
        expected = tuple(reversed(self.geometry.size))
        if tuple(self.array.shape) != expected:
            raise ValueError(f"array shape {self.array.shape} does not match geometry size (z, y, x) {expected}")


def to_sitk(volume: Volume) -> sitk.Image:
    """The volume as a SimpleITK image with its exact geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    volume.geometry.apply_to(image)
    return image


def from_sitk(image: sitk.Image, path: str | os.PathLike) -> Volume:
    """Wrap a 3-D SimpleITK image (array copied, dtype kept) as a :class:`Volume`."""
    return Volume(array=sitk.GetArrayFromImage(image), geometry=Geometry.from_sitk(image), path=Path(path))


def _short_reason(exc: BaseException) -> str:
    """The informative part of an ITK exception (they carry source-file and object noise)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    line = next((ln for ln in lines if "ITK ERROR" in ln or "Unable" in ln), lines[-1] if lines else "")
    line = re.sub(r"^.*?ITK ERROR: \w+\(0x[0-9a-fA-F]+\): ", "", line)
    line = re.sub(r"^(?:/\S+|sitk::ERROR):?\s*", "", line)
    return line.rstrip(":. ") or type(exc).__name__


def _read_file(path: Path) -> sitk.Image:
    """Read one image file as a scalar 3-D SimpleITK image, or raise :class:`InputError`."""
    check_image_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with captured_native_output():  # MetaIO prints its parse errors itself
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"not a readable image ({_short_reason(exc)})") from None
    voxels = float(np.prod(reader.GetSize(), dtype=np.float64))
    if voxels > MAX_VOXELS:
        raise InputError(path, f"header promises {voxels:.3g} voxels "
                               f"({'x'.join(map(str, reader.GetSize()))}); refusing more than {MAX_VOXELS}")
    dim = reader.GetDimension()
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"has {reader.GetNumberOfComponents()} components per voxel; expected a scalar CT image")
    if dim == 4 and size[3] == 1:
        reader.SetExtractIndex((0, 0, 0, 0))
        reader.SetExtractSize((size[0], size[1], size[2], 0))
    elif dim != 3:
        hint = "; pass the DICOM series folder" if path.suffix.lower() == ".dcm" else ""
        raise InputError(path, f"is a {dim}-D image of size {'x'.join(map(str, size))}; expected a 3-D volume{hint}")
    try:
        with captured_native_output():
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(path, f"not a readable image ({_short_reason(exc)})") from None
    if image.GetDimension() != 3:
        raise InputError(path, f"is a {image.GetDimension()}-D image; expected a 3-D volume")
    if image.GetSize()[2] == 1 and path.suffix.lower() == ".dcm":
        raise InputError(path, "is a single DICOM slice; pass the folder holding the whole series")
    return image


def _read_any(path: str | os.PathLike, series_uid: str | None) -> tuple[sitk.Image, Path]:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_dir():
        return read_dicom_series(path, series_uid), path
    if series_uid is not None:
        raise InputError(path, f"series_uid {series_uid!r} given but the input is a file, not a DICOM folder")
    return _read_file(path), path


def read_image(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a CT image: NIfTI, NRRD, MHA/MHD (any SimpleITK format) or a DICOM series folder.

    Args:
        path: an image file, or a folder holding one DICOM series.
        series_uid: which series to read when a DICOM folder holds several.
    Returns:
        A :class:`Volume` with a float32 ``(z, y, x)`` array in HU (DICOM rescale applied).
    Raises:
        InputError: missing path, unreadable/corrupt file, not 3-D, several DICOM series,
            DICOM slices missing or repeated.
    """
    image, p = _read_any(path, series_uid)
    array = np.array(sitk.GetArrayViewFromImage(image), dtype=np.float32, copy=True)  # one copy
    check_finite(array, p)
    return Volume(array=array, geometry=_geometry(image, p), path=p)


def _geometry(image: sitk.Image, path: Path) -> Geometry:
    try:
        return Geometry.from_sitk(image)
    except ValueError as exc:  # zero spacing from a format without a raw-file check
        raise InputError(path, str(exc)) from None


def check_label_values(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Validate a label array (integers >= 0) and return it as uint8/int16/int32.

    Float arrays whose values are all integral are accepted and cast.

    Raises:
        InputError: non-finite, non-integer or negative values (an example value is quoted).
    """
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            raise InputError(path, f"labels contain non-finite values, e.g. {float(array[bad].flat[0])!r}")
        frac = array != np.round(array)
        if frac.any():
            raise InputError(path, f"labels must be integers; found non-integer value {float(array[frac].flat[0])!r}")
    elif array.dtype.kind not in "iu":
        raise InputError(path, f"labels have unsupported voxel type {array.dtype}")
    if array.size == 0:
        raise InputError(path, "label volume is empty")
    lo, hi = array.min(), array.max()
    if lo < 0:
        raise InputError(path, f"labels must be >= 0; found negative value {int(lo)}")
    return array.astype(label_dtype(int(hi)), copy=False)


def read_labels(path: str | os.PathLike, reference: Volume | None = None) -> Volume:
    """Read a label volume and, given a ``reference`` image, put it on that image's grid.

    Args:
        path: a label file (NIfTI, NRRD, MHA, ...).
        reference: the image the labels belong to. The label grid must hold the same
            physical voxels (tolerance :data:`ragsam.data.geometry.TOLERANCE_VOXELS`),
            in any axis order or orientation; it is then permuted/flipped onto the
            image grid exactly (nearest neighbour, no label mixing).
    Returns:
        A :class:`Volume` of integer labels, on ``reference.geometry`` when given.
    Raises:
        InputError: unreadable file, non-integer or negative values, or a grid that does
            not cover the same voxels as the reference (the message says how they differ).
    """
    image, p = _read_any(path, None)
    array = check_label_values(sitk.GetArrayFromImage(image), p)
    volume = Volume(array=array, geometry=_geometry(image, p), path=p)
    if reference is None:
        return volume
    return pair_to_reference(volume, reference)


def pair_to_reference(labels: Volume, reference: Volume) -> Volume:
    """Bring ``labels`` onto ``reference``'s grid by physical position (see :func:`read_labels`)."""
    mapping = labels.geometry.voxel_mapping_to(reference.geometry)
    if mapping is None:
        diff = labels.geometry.describe_difference(reference.geometry) or "grids differ"
        raise InputError(
            labels.path,
            f"labels do not cover the same physical voxels as image {reference.path}: {diff}",
        )
    perm, flips = mapping
    xyz = labels.array.transpose(2, 1, 0)
    # Output image axis k takes label axis perm[k], reversed where flips[k].
    out = xyz.transpose(perm)
    flip_axes = tuple(k for k in range(3) if flips[k])
    if flip_axes:
        out = np.flip(out, axis=flip_axes)
    array = np.ascontiguousarray(out.transpose(2, 1, 0))
    return Volume(array=array, geometry=reference.geometry, path=labels.path)


def write_labels(
    array_zyx: np.ndarray, geometry: Geometry, path: str | os.PathLike, force: bool = False
) -> Path:
    """Write a label volume atomically (uint8 if max < 256, else int16) with ``geometry``.

    Args:
        array_zyx: integer labels ``(z, y, x)`` matching ``geometry.size`` reversed.
        geometry: the grid to store (copied exactly; NIfTI keeps it to float32 precision).
        path: output file; the extension picks the format (``.nii.gz`` recommended).
        force: replace an existing file.
    Returns:
        ``path``.
    Raises:
        OutputExistsError: ``path`` exists and ``force`` is false.
        InputError: labels not integral, negative, or above 32767; or the file cannot be
            written (no permission, disk full, unknown extension): nothing is left behind.

    Compression: ``.nii.gz`` is gzip-compressed by ITK, which ignores SimpleITK's
    ``compressionLevel`` hint for NIfTI (levels 0, 1, 6, 9 and the default give
    byte-identical files with SimpleITK 2.5.7 / ITK 5.4; ``bench/volume_inference.py
    --profile``). ITK's default is kept: an organ-shaped 100 x 512 x 512 map takes
    ~0.03 s and 0.12 MB (Python's gzip level 1: ~0.04 s, 0.29 MB); only speckled maps
    (a random model's: 0.5 s, 3.6 MB) would write faster at level 1 (0.2 s, 5.2 MB).
    """
    path = Path(path)
    array = np.asarray(array_zyx)
    if tuple(array.shape) != tuple(reversed(geometry.size)):
        raise ValueError(f"array shape {array.shape} does not match geometry size (z, y, x) {tuple(reversed(geometry.size))}")
    array = check_label_values(array, path)
    if int(array.max()) > np.iinfo(np.int16).max:
        raise InputError(path, f"label id {int(array.max())} does not fit int16")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    geometry.apply_to(image)
    try:
        with atomic_path(path, force) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=True)
    except OSError as exc:  # folder not creatable / writable, disk full (temporary file already removed)
        raise InputError(path, f"cannot be written ({exc.strerror or exc})") from None
    except RuntimeError as exc:  # ITK could not write the temporary file
        raise InputError(path, f"cannot be written ({_short_reason(exc)})") from None
    return path


def volume_summary(volume: Volume) -> dict[str, Any]:
    """A small JSON-able description (geometry, dtype, value range) for logs and manifests."""
    return {
        "path": str(volume.path),
        "geometry": volume.geometry.to_json(),
        "dtype": str(volume.array.dtype),
        "min": float(volume.array.min()),
        "max": float(volume.array.max()),
    }
