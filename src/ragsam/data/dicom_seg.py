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

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragsam.data.dicom_instances import slice_indices, source_datasets
from ragsam.data.seg_codes import CODES_RESOURCE, as_label_map, organ_code, organ_codes
from ragsam.errors import InputError

__all__ = ["CODES_RESOURCE", "SEG_SUFFIX", "build_dicom_seg", "organ_code", "organ_codes", "read_dicom_seg",
           "save_dicom_seg", "seg_path_for", "slice_indices", "source_datasets", "write_dicom_seg"]

if TYPE_CHECKING:  # pragma: no cover
    import highdicom
    import pydicom

    from ragsam.data.volume import Volume

#: File name suffix of a SEG written beside a NIfTI output (``case.nii.gz`` -> ``case.seg.dcm``).
SEG_SUFFIX = ".seg.dcm"
ALGORITHM_NAME = "ragsam"
DEFAULT_SERIES_DESCRIPTION = "ragsam segmentation"
DEFAULT_SERIES_NUMBER = 9900
#: Segmentation Storage and Label Map Segmentation Storage (both read; ragsam writes the first).
SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")


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
    from ragsam.data.label_maps import PALETTE

    lmap = as_label_map(label_map)
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
    lmap = as_label_map(label_map)
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
