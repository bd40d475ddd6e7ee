"""``pacs add-support``: a SEG corrected in OHIF / 3D Slicer, with its CT series, into a support bank.

Steps: find the SEG in the study (QIDO-RS, by its Series or SOP Instance UID) -> fetch it ->
the series it references must be a CT series of the same study (a SEG of another series or
study is refused) -> fetch that series (the cache's, see :mod:`ragsam.pacs.series`) -> the
SEG's segments become the bank's label ids by organ name, else by SNOMED CT code
(:func:`ragsam.data.dicom_seg.read_dicom_seg`) -> :func:`ragsam.retrieval.bank_edit.add_volume`
adds every slice holding an organ (or ``slices``), recorded with the SEG's address as source.
A SEG already added to the bank is refused (remove that addition first to add it again).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ragsam.errors import InputError
from ragsam.pacs.cache import InstanceCache
from ragsam.pacs.client import Pacs, check_uid, tag_value
from ragsam.pacs.series import SEGMENTATION_STORAGE, fetch_series, find_series


def seg_source(url: str, study_uid: str, seg_sop_uid: str) -> str:
    """How an addition records where it came from."""
    return f"{url} study {study_uid} SEG {seg_sop_uid}"


def find_seg(pacs: Pacs, study_uid: str, seg_uid: str) -> dict[str, Any]:
    """The QIDO item of the SEG: the only instance of series ``seg_uid``, or the instance ``seg_uid``.

    Raises:
        InputError: unknown study, nothing with that UID, not a SEG, a SEG series of several instances.
    """
    check_uid(study_uid, "study", pacs.url)
    check_uid(seg_uid, "SEG", pacs.url)
    if not pacs.study_exists(study_uid):
        raise InputError(pacs.url, f"no study {study_uid} on the PACS")
    items = pacs.find_instances(study_uid, {"SeriesInstanceUID": seg_uid}) or \
        pacs.find_instances(study_uid, {"SOPInstanceUID": seg_uid})
    if not items:
        raise InputError(pacs.url, f"study {study_uid} has no series or instance {seg_uid}")
    if len(items) > 1:
        uids = ", ".join(str(tag_value(i, "00080018")) for i in items[:5])
        raise InputError(pacs.url, f"series {seg_uid} holds {len(items)} instances ({uids}); give the SEG's SOP "
                                   "Instance UID with --seg")
    sop_class = str(tag_value(items[0], "00080016", ""))
    if sop_class and sop_class != SEGMENTATION_STORAGE:
        raise InputError(pacs.url, f"{seg_uid} is not a DICOM SEG (SOP class {sop_class}, modality "
                                   f"{tag_value(items[0], '00080060', 'unknown')})")
    return items[0]


def pacs_add_support(pacs: Pacs, study_uid: str, seg_uid: str, bank_dir: str | os.PathLike,
                     series_uid: str | None = None, cache: InstanceCache | None = None,
                     slices: Sequence[int] | None = None, added_by: str | None = None) -> Any:
    """Add the slices of a corrected SEG (and its CT series) to a support bank.

    Args:
        seg_uid: the SEG's SeriesInstanceUID (a series of one SEG) or SOPInstanceUID.
        series_uid: if given, the SEG must segment this series.
        slices: canonical z indices to add; ``None``: every slice holding an organ.
    Returns:
        The :class:`~ragsam.retrieval.bank_edit.Addition`.
    Raises:
        InputError: see the module docstring, :mod:`ragsam.pacs.series` and the bank's own checks.
    """
    import numpy as np

    from ragsam.data.dicom_seg import read_dicom_seg
    from ragsam.data.label_maps import LabelMap
    from ragsam.data.volume import read_image, write_labels
    from ragsam.retrieval.bank import SupportBank
    from ragsam.retrieval.bank_edit import add_volume, list_additions

    cache = cache or InstanceCache()
    bank = SupportBank.load(bank_dir)  # a bad bank fails before any download
    item = find_seg(pacs, study_uid, seg_uid)
    seg_sop, seg_series = str(tag_value(item, "00080018")), str(tag_value(item, "0020000E"))
    source = seg_source(pacs.url, study_uid, seg_sop)
    done = [a.id for a in list_additions(bank_dir) if a.source == source]
    if done:
        raise InputError(bank_dir, f"SEG {seg_sop} is already in the bank as {done[0]} "
                                   f"(`ragsam index remove {bank_dir} {done[0]}` first to add it again)")
    if not cache.has(seg_sop):
        cache.put(seg_sop, pacs.retrieve(study_uid, seg_series, seg_sop), pacs.url)
    seg_path = cache.path(seg_sop)
    referenced = _referenced_series(seg_path, pacs.url, seg_sop)
    if series_uid is not None and referenced != series_uid:
        raise InputError(pacs.url, f"SEG {seg_sop} segments series {referenced}, not --series {series_uid}")
    if referenced not in {str(tag_value(s, "0020000E")) for s in pacs.series(study_uid)}:
        raise InputError(pacs.url, f"SEG {seg_sop} segments series {referenced}, which is not in study {study_uid}")
    find_series(pacs, study_uid, referenced)  # CT, known
    fetched = fetch_series(pacs, cache, study_uid, referenced)
    image = read_image(fetched.folder)
    label_map = LabelMap.from_json(bank.prepare_meta().label_map, source=str(bank_dir))
    labels = read_dicom_seg(seg_path, image, label_map=label_map)
    if not np.any(labels):
        raise InputError(pacs.url, f"SEG {seg_sop} holds no voxel of any organ; nothing to add")
    labels_path = cache.results_dir(referenced) / f"support-{seg_sop}.nii.gz"
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    write_labels(labels, image.geometry, labels_path, force=True)
    return add_volume(bank_dir, fetched.folder, labels_path, slices=slices, added_by=added_by, source=source)


def _referenced_series(path: Any, url: str, seg_sop: str) -> str:
    """The one series a SEG references (ReferencedSeriesSequence)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    items = ds.get("ReferencedSeriesSequence") or []
    uids = sorted({str(i.SeriesInstanceUID) for i in items if "SeriesInstanceUID" in i})
    if len(uids) != 1:
        raise InputError(url, f"SEG {seg_sop} references {len(uids)} series ({', '.join(uids[:3])}); "
                              "expected the one CT series it segments")
    return uids[0]
