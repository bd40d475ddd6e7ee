"""DICOM SEG output and input: a label volume as a Segmentation object lying on its source series.

highdicom and pydicom are imported inside the functions (boundary module), so model and
training code never needs them.

* :func:`build_dicom_seg` turns ragsam's label :class:`~ragsam.data.volume.Volume` (on the grid
  of the DICOM series it was computed from) into a BINARY ``highdicom.seg.Segmentation``:
  one frame per source instance and segment (empty frames omitted), each frame referencing
  its source instance and carrying that instance's plane position; the SEG references the
  source series and every instance, shares its study, patient and frame of reference.
* **Segments**: one per organ of the label map, *every* organ of the map, in id order,
  whether or not it was found (a viewer then lists the same organs for every case, and
  segment number = label id when the map's ids are 1..K, as for every built-in map; a
  map with gaps gets segments 1..K in id order, read back by name with ``label_map``).
  An organ with no voxel has no frame. Each segment carries the label map's organ name
  (SegmentLabel), the SNOMED CT codes of :data:`CODES_RESOURCE` (category, type, laterality
  modifier), the reports' colour, and the algorithm identification: name ``ragsam``,
  ragsam's version, family "Artificial Intelligence", parameters ``method=<algorithm>``
  and ``model=<model key>``.
* **UIDs** are derived from their content (pydicom ``generate_uid`` with entropy sources):
  the same source series, model key, method and labels give the same Series and SOP
  Instance UIDs, so storing a rerun's SEG into a PACS replaces the earlier one instead
  of adding a copy; other labels (a correction) give another SOP Instance UID.
* :func:`read_dicom_seg` gives a SEG's dense labels ``(z, y, x)`` on a reference volume read
  from the source series (BINARY, FRACTIONAL or LABELMAP SEGs whose frames reference the
  source instances, as ragsam, highdicom, dcmqi / 3D Slicer and OHIF write them), segments
  by number or, with a label map, by name or SNOMED CT code; a SEG that references another
  series is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragsam.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import highdicom
    import pydicom

    from ragsam.data.label_maps import LabelMap
    from ragsam.data.volume import Volume

#: The SNOMED CT table of the organs (category, type, modifier per organ name).
CODES_RESOURCE = "snomed_organs.json"
#: File name suffix of a SEG written beside a NIfTI output (``case.nii.gz`` -> ``case.seg.dcm``).
SEG_SUFFIX = ".seg.dcm"
ALGORITHM_NAME = "ragsam"
DEFAULT_SERIES_DESCRIPTION = "ragsam segmentation"
DEFAULT_SERIES_NUMBER = 9900
#: Segmentation Storage and Label Map Segmentation Storage (both read; ragsam writes the first).
SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
#: Largest distance, in voxels, between an instance's position and a voxel plane of the labels.
POSITION_TOLERANCE_VOXELS = 1e-2
#: Largest difference between an instance's direction cosines and the labels' direction.
DIRECTION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Coded:
    """One code: coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def concept(self) -> Any:
        """As a ``highdicom.sr.CodedConcept``."""
        from highdicom.sr import CodedConcept

        return CodedConcept(self.value, self.scheme, self.meaning)


@dataclass(frozen=True)
class OrganCode:
    """The segment codes of one organ: category (CID 7150), type and laterality modifier (or ``None``)."""

    category: Coded
    type: Coded
    modifier: Coded | None = None


@functools.cache
def organ_codes() -> dict[str, OrganCode]:
    """``{organ name (lower case): OrganCode}`` from the packaged table :data:`CODES_RESOURCE`."""
    data = json.loads(resources.files("ragsam.resources").joinpath(CODES_RESOURCE).read_text(encoding="utf-8"))
    categories = {name: Coded(**c) for name, c in data["categories"].items()}
    return {name: OrganCode(categories[o["category"]], Coded(**o["type"]),
                            Coded(**o["modifier"]) if o.get("modifier") else None)
            for name, o in data["organs"].items()}


def organ_code(name: str, source: str | os.PathLike | None = None) -> OrganCode:
    """The codes of organ ``name`` (case-insensitive).

    Raises:
        InputError: the organ is not in the table (naming the table and the known organs).
    """
    codes = organ_codes()
    found = codes.get(name.strip().lower())
    if found is None:
        raise InputError(source, f"organ {name!r} has no SNOMED CT code in ragsam's table ({CODES_RESOURCE}: "
                                 f"{', '.join(sorted(codes))}); a DICOM SEG needs one: rename it in the label "
                                 "map or write NIfTI (--output-format nifti)")
    return found


def seg_path_for(output: str | os.PathLike) -> Path:
    """Where the SEG of a label file goes: ``case.nii.gz`` -> ``case.seg.dcm`` (same folder)."""
    from ragsam.utils.paths import LABEL_FILE_SUFFIXES

    output = Path(output)
    name = output.name
    for suffix in (SEG_SUFFIX, *LABEL_FILE_SUFFIXES, ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output.with_name(name + SEG_SUFFIX)


def _as_label_map(label_map: Any) -> LabelMap:
    from ragsam.data.label_maps import LabelMap, load_label_map

    if isinstance(label_map, LabelMap):
        return label_map
    if isinstance(label_map, Mapping):
        return LabelMap("custom", {int(k): str(v) for k, v in label_map.items()} | {0: "background"})
    return load_label_map(label_map)


# --- the source series ------------------------------------------------------------------------------


def source_datasets(source_series: str | os.PathLike | Sequence[pydicom.Dataset],
                    series_uid: str | None = None) -> tuple[list[pydicom.Dataset], Path | None]:
    """The instances of the source series (headers only when read from a folder) and the folder.

    Args:
        source_series: a DICOM series folder (the one series, or ``series_uid`` among several)
            or the instances' datasets.
        series_uid: which series of the folder.
    Returns:
        ``(datasets, folder or None)``; SOP Instance / Class UIDs missing from a dataset are
        taken from its file meta information (where DICOM stores the same UIDs).
    Raises:
        InputError: unreadable files, several series, missing study / series / instance UIDs,
            multi-frame instances.
    """
    import pydicom

    folder: Path | None = None
    if isinstance(source_series, (str, os.PathLike)):
        from ragsam.data.dicom import select_series

        folder = Path(source_series)
        if not folder.is_dir():
            raise InputError(folder, "is not a DICOM series folder; a DICOM SEG needs the source series")
        series = select_series(folder, series_uid)
        datasets = []
        for f in series.files:
            try:
                datasets.append(pydicom.dcmread(f, stop_before_pixels=True))
            except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
                raise InputError(f, f"not a readable DICOM file ({exc})") from None
    else:
        datasets = list(source_series)
    if not datasets:
        raise InputError(folder, "the source series holds no instance")
    where = folder if folder is not None else getattr(datasets[0], "filename", None)
    out = [_with_instance_uids(ds) for ds in datasets]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID"):
        missing = sum(1 for ds in out if not str(ds.get(keyword, "") or "").strip())
        if missing:
            raise InputError(where, f"{missing} of {len(out)} DICOM instances have no {keyword} (anonymised?); "
                                    "a DICOM SEG must reference it: restore the UIDs or write NIfTI "
                                    "(--output-format nifti)")
    uids = sorted({str(ds.SeriesInstanceUID) for ds in out})
    if len(uids) > 1:
        raise InputError(where, f"the instances belong to {len(uids)} series ({', '.join(uids[:3])}); give one series")
    frames = [int(ds.get("NumberOfFrames", 1) or 1) for ds in out]
    if max(frames) > 1:
        raise InputError(where, f"multi-frame DICOM instances ({max(frames)} frames, e.g. enhanced CT) are not "
                                "supported as SEG sources; export the series as single-frame CT images")
    return out, folder


def _with_instance_uids(ds: pydicom.Dataset) -> pydicom.Dataset:
    meta = getattr(ds, "file_meta", None)
    fixes = {}
    for keyword, meta_keyword in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                  ("SOPClassUID", "MediaStorageSOPClassUID")):
        if not str(ds.get(keyword, "") or "").strip() and meta is not None and meta.get(meta_keyword):
            fixes[keyword] = str(meta.get(meta_keyword))
    if not fixes:
        return ds
    ds = ds.copy()  # the caller's dataset stays as it was
    for keyword, value in fixes.items():
        setattr(ds, keyword, value)
    return ds


def _floats(ds: pydicom.Dataset, keyword: str, n: int, where: Any) -> np.ndarray:
    try:
        values = np.array([float(v) for v in ds[keyword].value], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        values = np.zeros(0)
    if values.shape != (n,):
        raise InputError(where, f"DICOM instance {ds.get('SOPInstanceUID', '?')} lacks a valid {keyword}")
    return values


def slice_indices(datasets: Sequence[pydicom.Dataset], geometry: Any, where: Any) -> np.ndarray:
    """The z index, on ``geometry``, of each instance's plane; every plane must be one voxel plane.

    Args:
        datasets: single-frame instances (ImagePositionPatient, ImageOrientationPatient,
            PixelSpacing, Rows, Columns).
        geometry: the :class:`~ragsam.data.geometry.Geometry` of a volume read from them.
        where: named in messages.
    Returns:
        int64 ``(len(datasets),)``, a permutation of ``0..nz-1``.
    Raises:
        InputError: an instance off the grid (position, orientation, spacing, size), a missing
            or repeated plane; the message says which and by how much.
    """
    size, spacing = geometry.size, geometry.spacing
    direction = geometry.direction_matrix
    inverse = np.linalg.inv(geometry.index_to_world)
    origin = np.asarray(geometry.origin)
    out = np.empty(len(datasets), dtype=np.int64)
    for n, ds in enumerate(datasets):
        iop = _floats(ds, "ImageOrientationPatient", 6, where)
        ipp = _floats(ds, "ImagePositionPatient", 3, where)
        pixel = _floats(ds, "PixelSpacing", 2, where)  # (between rows, between columns) = (y, x)
        uid = ds.get("SOPInstanceUID", "?")
        if (int(ds.Columns), int(ds.Rows)) != (size[0], size[1]):
            raise InputError(where, f"instance {uid} is {ds.Columns}x{ds.Rows} pixels; the labels are "
                                    f"{size[0]}x{size[1]}: they are not on this series' grid")
        if np.abs(iop[:3] - direction[:, 0]).max() > DIRECTION_TOLERANCE or \
                np.abs(iop[3:] - direction[:, 1]).max() > DIRECTION_TOLERANCE:
            raise InputError(where, f"instance {uid} has orientation {np.round(iop, 5).tolist()}, the labels' rows and "
                                    f"columns run along {np.round(direction[:, :2].T.ravel(), 5).tolist()}")
        if np.abs(pixel - (spacing[1], spacing[0])).max() > POSITION_TOLERANCE_VOXELS * min(spacing[:2]):
            raise InputError(where, f"instance {uid} has pixel spacing {pixel.tolist()} mm, the labels "
                                    f"{[spacing[1], spacing[0]]} mm")
        index = inverse @ (ipp - origin)
        k = int(np.round(index[2]))
        if np.abs(index[:2]).max() > POSITION_TOLERANCE_VOXELS or abs(index[2] - k) > POSITION_TOLERANCE_VOXELS \
                or not 0 <= k < size[2]:
            raise InputError(where, f"instance {uid} at {ipp.tolist()} mm is not on a slice of the labels' grid "
                                    f"(voxel index {np.round(index, 3).tolist()} of {list(size)})")
        out[n] = k
    counts = np.bincount(out, minlength=size[2])
    if counts.max() > 1 or counts.min() == 0:
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        repeated = np.flatnonzero(counts > 1)[:5].tolist()
        raise InputError(where, f"the {len(datasets)} instances do not cover the labels' {size[2]} slices once each "
                                f"(slices without an instance: {missing}, with several: {repeated})")
    return out


def _content_uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[json.dumps(p, sort_keys=True, default=str) for p in parts]))


# --- writing -----------------------------------------------------------------------------------------


def build_dicom_seg(labels: Volume, source_series: str | os.PathLike | Sequence[pydicom.Dataset],
                    label_map: Any, *, algorithm: str, model_key: str,
                    series_description: str = DEFAULT_SERIES_DESCRIPTION, series_uid: str | None = None,
                    series_number: int = DEFAULT_SERIES_NUMBER) -> highdicom.seg.Segmentation:
    """A BINARY DICOM SEG of ``labels`` on its source series (see the module docstring).

    Args:
        labels: integer labels ``(z, y, x)`` on the grid of the source series (as
            ``read_image(folder)`` gives it); ids from ``label_map``.
        source_series: the DICOM series folder, or its instances' datasets (headers suffice).
        label_map: a :class:`~ragsam.data.label_maps.LabelMap`, a built-in name / JSON path,
            or ``{id: name}``; every organ needs a code in :data:`CODES_RESOURCE`.
        algorithm: the method, e.g. ``"fine-tuned SAM"``, ``"RAG"`` or ``"hybrid"``.
        model_key: what identifies the model (run / weights hash), stored as an algorithm parameter.
        series_description: SeriesDescription of the SEG series.
        series_uid: which series of a folder holding several.
        series_number: SeriesNumber of the SEG series.
    Returns:
        The ``highdicom.seg.Segmentation`` (not yet written).
    Raises:
        InputError: labels not on the series' grid, label ids outside the map, organs without a
            code, a series without the UIDs a SEG references.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    import ragsam
    from ragsam.evaluation.overlays import PALETTE

    lmap = _as_label_map(label_map)
    datasets, folder = source_datasets(source_series, series_uid)
    where = folder if folder is not None else labels.path
    z = slice_indices(datasets, labels.geometry, where)
    organ_ids = lmap.organ_ids
    if not organ_ids:
        raise InputError(where, f"label map {lmap.name!r} names no organ")
    found = np.flatnonzero(np.bincount(np.asarray(labels.array).ravel().astype(np.int64)))
    unknown = sorted(set(found.tolist()) - {0, *organ_ids})
    if unknown:
        raise InputError(labels.path, f"label ids {unknown} are not in label map {lmap.name!r} ({organ_ids})")
    lut = np.zeros(max(organ_ids) + 1, dtype=np.uint16)  # label id -> segment number
    lut[organ_ids] = np.arange(1, len(organ_ids) + 1)
    frames = lut[np.asarray(labels.array)[z]]  # (instances, rows, columns), segment numbers
    frames = frames.astype(np.uint8 if len(organ_ids) < 256 else np.uint16)

    family = codes.cid7162.ArtificialIntelligence
    algo = hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, family=family, version=ragsam.__version__,
                                              parameters={"method": algorithm, "model": model_key})
    segments = []
    for number, organ in enumerate(organ_ids, start=1):
        name = lmap.labels[organ]
        code = organ_code(name, where)
        rgb = PALETTE[(organ - 1) % len(PALETTE)].lstrip("#")
        segments.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=code.category.concept(),
            segmented_property_type=code.type.concept(), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            display_color=hd.color.CIELabColor.from_rgb(*(int(rgb[i:i + 2], 16) for i in (0, 2, 4))),
        ))
        if code.modifier is not None:  # highdicom has no argument for it (SegmentedPropertyTypeModifierCodeSequence)
            segments[-1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(code.modifier.value, code.modifier.scheme, code.modifier.meaning)]

    source_uid = str(datasets[0].SeriesInstanceUID)
    seg_series = _content_uid("series", source_uid, algorithm, model_key, series_description)
    digest = hashlib.sha1(np.ascontiguousarray(frames).tobytes()).hexdigest()
    seg_instance = _content_uid("instance", seg_series, digest, lmap.to_json())
    try:
        return hd.seg.Segmentation(
            source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments, series_instance_uid=seg_series, series_number=int(series_number),
            sop_instance_uid=seg_instance, instance_number=1, manufacturer=ALGORITHM_NAME,
            manufacturer_model_name=algorithm[:64] or ALGORITHM_NAME, software_versions=ragsam.__version__,
            device_serial_number=model_key[:64] or "none", series_description=series_description[:64],
            content_label="RAGSAM", content_description=f"{algorithm} segmentation"[:64], omit_empty_frames=True)
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's checks on the source instances
        raise InputError(where, f"cannot build a DICOM SEG on this series ({exc})") from None


def write_dicom_seg(labels: Volume, source_series: str | os.PathLike | Sequence[pydicom.Dataset],
                    label_map: Any, *, algorithm: str, model_key: str, out: str | os.PathLike,
                    force: bool = False, **options: Any) -> Path:
    """Build (:func:`build_dicom_seg`, ``options`` passed on) and write a SEG atomically to ``out``.

    Raises:
        OutputExistsError: ``out`` exists and ``force`` is false (checked before any work).
        InputError: as :func:`build_dicom_seg`; the file cannot be written.
    """
    from ragsam.utils.atomic import check_writable

    out = Path(out)
    check_writable(out, force)
    seg = build_dicom_seg(labels, source_series, label_map, algorithm=algorithm, model_key=model_key, **options)
    return save_dicom_seg(seg, out, force)


def save_dicom_seg(seg: Any, out: str | os.PathLike, force: bool = False) -> Path:
    """Write a built SEG (or any pydicom dataset) to ``out`` atomically.

    Raises:
        OutputExistsError: ``out`` exists and ``force`` is false.
        InputError: the file cannot be written (nothing is left behind).
    """
    from ragsam.utils.atomic import atomic_path

    out = Path(out)
    try:
        with atomic_path(out, force) as tmp:
            seg.save_as(tmp)
    except OSError as exc:
        raise InputError(out, f"cannot be written ({exc.strerror or exc})") from None
    return out


# --- reading -----------------------------------------------------------------------------------------


def _load_seg(path_or_dataset: str | os.PathLike | pydicom.Dataset) -> tuple[highdicom.seg.Segmentation, Any]:
    import highdicom as hd
    import pydicom

    if isinstance(path_or_dataset, pydicom.Dataset):
        where = getattr(path_or_dataset, "filename", None) or "DICOM SEG"
        dataset = path_or_dataset
    else:
        where = Path(path_or_dataset)
        try:
            dataset = pydicom.dcmread(where)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
            raise InputError(where, f"not a readable DICOM file ({exc})") from None
    if str(dataset.get("SOPClassUID", "")) not in SEG_SOP_CLASSES:
        raise InputError(where, f"is not a DICOM SEG (SOP class {dataset.get('SOPClassUID', 'missing')}, "
                                f"modality {dataset.get('Modality', 'missing')})")
    try:
        return hd.seg.Segmentation.from_dataset(dataset, copy=False), where
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InputError(where, f"malformed DICOM SEG ({exc})") from None


def _segments_with_frames(seg: Any) -> set[int]:
    """Segment numbers that have at least one frame (every segment of a LABELMAP SEG)."""
    numbers = {int(n) for n in seg.segment_numbers}
    groups = seg.get("PerFrameFunctionalGroupsSequence") or []
    if str(seg.get("SegmentationType", "")) == "LABELMAP" or not groups or \
            "SegmentIdentificationSequence" not in groups[0]:
        return numbers
    return {int(g.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for g in groups}


def _segment_lut(seg: Any, label_map: Any, where: Any) -> np.ndarray:
    """Segment number -> label id: the segment number itself, or the map's id of the segment's
    label (case-insensitive), else of its codes (type and modifier from the table)."""
    numbers = [int(n) for n in seg.segment_numbers]
    lut = np.arange(max(numbers, default=0) + 1, dtype=np.int64)
    if label_map is None:
        return lut
    lmap = _as_label_map(label_map)
    by_name = {name.lower(): i for i, name in lmap.labels.items() if i}
    by_code = {}
    for i, name in lmap.labels.items():
        code = organ_codes().get(name.lower()) if i else None
        if code is not None:
            by_code[(code.type.scheme, code.type.value, code.modifier and code.modifier.value)] = i
    framed = _segments_with_frames(seg)
    for number in numbers:
        item = seg.get_segment_description(number)
        label = str(item.get("SegmentLabel", "")).strip().lower()
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        modifiers = kind.get("SegmentedPropertyTypeModifierCodeSequence") or []
        key = (str(kind.CodingSchemeDesignator), str(kind.CodeValue), str(modifiers[0].CodeValue) if modifiers else None)
        organ = by_name.get(label, by_code.get(key))
        if organ is None and number not in framed:  # an empty segment of an organ this map lacks
            organ = 0
        if organ is None:
            raise InputError(where, f"segment {number} ({item.get('SegmentLabel', '')!r}, {kind.CodeMeaning}) is no "
                                    f"organ of label map {lmap.name!r}")
        lut[number] = organ
    return lut


def read_dicom_seg(path_or_dataset: str | os.PathLike | pydicom.Dataset, reference: Volume, *,
                   label_map: Any = None,
                   source_series: str | os.PathLike | Sequence[pydicom.Dataset] | None = None) -> np.ndarray:
    """Dense labels of a DICOM SEG on the grid of the series it segments.

    Args:
        path_or_dataset: a SEG file or dataset.
        reference: the source series as :func:`~ragsam.data.volume.read_image` read it (its
            ``path`` is the series folder unless ``source_series`` is given).
        label_map: ``None``: voxel value = segment number (ragsam's own SEGs of a map with ids
            1..K: the label id). Else (a :class:`~ragsam.data.label_maps.LabelMap`, name, path or
            ``{id: name}``): each segment becomes the id of the organ of the same name, else of
            the same SNOMED CT type and modifier (a SEG edited in OHIF or Slicer).
        source_series: the source instances (folder or datasets) when ``reference.path`` is not
            the series folder.
    Returns:
        ``(z, y, x)`` integer labels on ``reference.geometry`` (uint8 / int16 / int32 by the
        largest id); where segments overlap the higher segment number wins; a FRACTIONAL
        segment holds the voxels where its value is >= 0.5.
    Raises:
        InputError: not a SEG; a SEG of another series (or whose frames reference instances that
            are not the reference's); a reference that is not a DICOM series; a segment that no
            organ of ``label_map`` matches.
    """
    from ragsam.data.dicom import list_series
    from ragsam.data.label_maps import label_dtype

    seg, where = _load_seg(path_or_dataset)
    referenced = sorted({str(series) for _, series, _ in seg.get_source_image_uids()})
    if len(referenced) != 1:
        raise InputError(where, f"references {len(referenced)} series ({', '.join(referenced[:3])}); "
                                "expected the one series it segments")
    seg_series = referenced[0]
    source = reference.path if source_series is None else source_series
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_dir():
            raise InputError(where, f"the reference {source} is not a DICOM series folder; a SEG is read onto "
                                    "the series it references")
        present = [s.uid for s in list_series(source)]
        if seg_series not in present:
            raise InputError(where, f"references series {seg_series}, not the reference series {source} "
                                    f"({', '.join(u or '(no UID)' for u in present)})")
        datasets, _ = source_datasets(source, seg_series)
    else:
        datasets, _ = source_datasets(source)
        if str(datasets[0].SeriesInstanceUID) != seg_series:
            raise InputError(where, f"references series {seg_series}, not the reference series "
                                    f"{datasets[0].SeriesInstanceUID}")
    z = slice_indices(datasets, reference.geometry, reference.path)
    by_z = [""] * len(datasets)
    for ds, k in zip(datasets, z, strict=True):
        by_z[int(k)] = str(ds.SOPInstanceUID)
    foreign = sorted({str(sop) for _, _, sop in seg.get_source_image_uids()} - set(by_z))
    if foreign:
        raise InputError(where, f"references {len(foreign)} instances that are not in series {seg_series} "
                                f"(e.g. {foreign[0]})")
    size = reference.geometry.size
    if (int(seg.Columns), int(seg.Rows)) != (size[0], size[1]):
        raise InputError(where, f"frames of {seg.Columns}x{seg.Rows} pixels on a {size[0]}x{size[1]} series")
    lut = _segment_lut(seg, label_map, where)
    numbers = sorted(int(n) for n in seg.segment_numbers)
    framed = _segments_with_frames(seg)
    fractional = str(seg.get("SegmentationType", "")) == "FRACTIONAL"
    out = np.zeros(tuple(reversed(size)), dtype=label_dtype(int(lut.max(initial=0))))
    try:
        for number in numbers:  # one segment at a time (no stack of every segment); where they overlap, the last wins
            if number not in framed or not lut[number]:
                continue
            if fractional:  # probabilities / occupancy in [0, 1]: the voxel belongs where it is >= 0.5
                mask = seg.get_pixels_by_source_instance(by_z, segment_numbers=[number],
                                                         assert_missing_frames_are_empty=True)[..., 0] >= 0.5
            else:
                mask = seg.get_pixels_by_source_instance(by_z, segment_numbers=[number], combine_segments=True,
                                                         assert_missing_frames_are_empty=True) > 0
            out[mask] = lut[number]
    except (ValueError, KeyError) as exc:
        raise InputError(where, f"cannot read the SEG's frames onto series {seg_series} ({exc})") from None
    return out
