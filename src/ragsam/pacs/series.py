"""Find a CT series in a study, fetch it into the cache (WADO-RS), and check it before any segmentation.

Refused, one line each, before a model loads or anything is stored: an unknown study or
series, a series that is not CT, a study with several CT series and no ``--series``,
multi-frame (Enhanced) CT, an instance of another SOP class, a transfer syntax that ragsam's
DICOM reader (GDCM, through SimpleITK) cannot decode, and missing or repeated slices and
uneven spacing (:func:`ragsam.data.dicom.check_slice_positions`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragsam.errors import InputError
from ragsam.pacs.cache import InstanceCache
from ragsam.pacs.client import Pacs, check_uid, tag_value

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: WADO-RS requests in flight while fetching a series (a few hide the per-request latency).
FETCH_WORKERS = 4

#: Transfer syntaxes the DICOM reader decodes (GDCM in SimpleITK; each one read back in
#: tests/pacs/test_series.py), with the names used in messages.
DECODED_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


@dataclass(frozen=True)
class FetchedSeries:
    """A CT series in the local cache, checked.

    Attributes:
        study_uid, series_uid: where it is in the PACS.
        folder: the cache's folder of the series (what ``segment`` / ``predict`` read).
        sop_uids: its instances.
        fetched: instances downloaded now; cached: instances already in the cache.
        description: SeriesDescription.
    """

    study_uid: str
    series_uid: str
    folder: Path
    sop_uids: list[str]
    fetched: int
    cached: int
    description: str

    def where(self, url: str) -> str:
        """``URL study S series X`` for messages."""
        return f"{url} study {self.study_uid} series {self.series_uid}"


def find_series(pacs: Pacs, study_uid: str, series_uid: str | None, modality: str = "CT") -> dict[str, Any]:
    """The QIDO item of the series to use: ``series_uid``, or the study's only series of ``modality``.

    Raises:
        InputError: unknown study or series, a series of another modality, none or several candidates.
    """
    check_uid(study_uid, "study", pacs.url)
    if series_uid is not None:
        check_uid(series_uid, "series", pacs.url)
    if not pacs.study_exists(study_uid):
        raise InputError(pacs.url, f"no study {study_uid} on the PACS")
    items = pacs.series(study_uid)
    listing = "; ".join(f"{tag_value(s, '0020000E')} ({tag_value(s, '00080060', '?')}, "
                        f"{tag_value(s, '00201209', '?')} instances)" for s in items)
    if series_uid is not None:
        found = [s for s in items if tag_value(s, "0020000E") == series_uid]
        if not found:
            raise InputError(pacs.url, f"study {study_uid} has no series {series_uid}; its series: {listing or 'none'}")
        found_modality = tag_value(found[0], "00080060", "unknown")
        if found_modality != modality:
            raise InputError(pacs.url, f"series {series_uid} is {found_modality}, not {modality}; "
                                       f"ragsam segments {modality} series")
        return found[0]
    candidates = [s for s in items if tag_value(s, "00080060") == modality]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise InputError(pacs.url, f"study {study_uid} has no {modality} series; its series: {listing or 'none'}")
    raise InputError(pacs.url, f"study {study_uid} has {len(candidates)} {modality} series; choose one with "
                               f"--series: {listing}")


def fetch_series(pacs: Pacs, cache: InstanceCache, study_uid: str, series_uid: str,
                 progress: Callable[[int, int], None] | None = None, workers: int = FETCH_WORKERS) -> FetchedSeries:
    """Fetch the instances of a CT series that the cache lacks, then check the series.

    Args:
        progress: called as ``progress(instances_done, instances_total)`` after each instance.
        workers: instances fetched at once (one WADO-RS request each).
    Raises:
        InputError: see the module docstring; a connection lost mid-fetch (the instances
            received so far stay cached, a rerun fetches the rest).
    """
    where = f"{pacs.url} series {series_uid}"
    items = pacs.instances(study_uid, series_uid)
    if not items:
        raise InputError(where, "the series holds no instances")
    uids = [check_uid(str(tag_value(i, "00080018", "")), "SOP Instance UID", where) for i in items]
    for item, uid in zip(items, uids, strict=True):
        _check_instance_class(where, uid, str(tag_value(item, "00080016", "")), tag_value(item, "00280008"))
    missing = [uid for uid in uids if not cache.has(uid)]
    cached = len(uids) - len(missing)

    def fetch_one(uid: str) -> None:
        dataset = pacs.retrieve(study_uid, series_uid, uid)
        _check_instance_class(where, uid, str(getattr(dataset, "SOPClassUID", "")),
                              getattr(dataset, "NumberOfFrames", None))
        cache.put(uid, dataset, where)

    with ThreadPoolExecutor(max(1, min(workers, len(missing) or 1)), "ragsam-fetch") as pool:
        futures = [pool.submit(fetch_one, uid) for uid in missing]
        try:
            for done, future in enumerate(as_completed(futures), start=cached + 1):
                future.result()  # the first failure is raised; what arrived before it stays cached
                if progress is not None:
                    progress(done, len(uids))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    files = [cache.path(uid) for uid in uids]
    description = check_files(where, files)
    folder = cache.series_folder(series_uid, uids)
    return FetchedSeries(study_uid, series_uid, folder, uids, len(uids) - cached, cached, description)


def _check_instance_class(where: str, uid: str, sop_class: str, frames: Any) -> None:
    if sop_class in (ENHANCED_CT_STORAGE, LEGACY_ENHANCED_CT_STORAGE) or (frames not in (None, "") and int(frames) > 1):
        raise InputError(where, f"instance {uid} is multi-frame (Enhanced) CT; ragsam reads single-frame CT "
                                "(CT Image Storage): convert it first (e.g. dcm4che's emf2sf)")
    if sop_class and sop_class != CT_IMAGE_STORAGE:
        raise InputError(where, f"instance {uid} is of SOP class {sop_class}, not CT Image Storage "
                                f"({CT_IMAGE_STORAGE})")


def check_files(where: str, files: list[Path]) -> str:
    """Check the fetched files' headers: CT, decodable transfer syntax, one series, regular slices.

    Returns:
        The SeriesDescription (``""`` if absent).
    """
    import pydicom

    from ragsam.data.dicom import check_slice_positions

    description, series = "", set()
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
        if syntax not in DECODED_SYNTAXES:
            name = getattr(pydicom.uid.UID(syntax), "name", syntax) if syntax else "none"
            raise InputError(where, f"instance {header.SOPInstanceUID} uses transfer syntax {name} ({syntax}), "
                                    f"which ragsam cannot decode; it reads {', '.join(sorted(set(DECODED_SYNTAXES.values())))}")
        if str(getattr(header, "Modality", "")) != "CT":
            raise InputError(where, f"instance {header.SOPInstanceUID} is {getattr(header, 'Modality', 'no modality')}, "
                                    "not CT")
        series.add(str(header.SeriesInstanceUID))
        description = description or str(getattr(header, "SeriesDescription", "") or "")
    if len(series) != 1:
        raise InputError(where, f"the instances belong to {len(series)} series: {sorted(series)}")
    check_slice_positions(where, files)
    return description
