"""Cases: an image (file or DICOM folder) with optional labels, and how file names give case ids.

:class:`CaseRef` only names files (cheap, JSON-able, what :func:`ragsam.data.layouts.discover_cases`
returns); :func:`load_case` reads them, pairing labels to the image by physical
geometry (:func:`ragsam.data.volume.read_labels`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragsam.errors import InputError

#: File endings read as images/labels (longest first so ``.nii.gz`` wins over ``.gz``).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: nnU-Net channel suffix: ``<case>_0000.nii.gz`` is channel 0 of ``<case>``.
CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def image_suffix(name: str) -> str | None:
    """The image ending of a file name (case-insensitive), or ``None`` if it is not an image."""
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            return name[len(name) - len(suffix):]
    return None


def strip_suffix(name: str) -> str:
    """``"img0001.nii.gz" -> "img0001"`` (the name unchanged if it has no image ending)."""
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def split_channel(stem: str) -> tuple[str, int | None]:
    """``"la_003_0000" -> ("la_003", 0)``; ``("x", None)`` without a channel suffix."""
    m = CHANNEL_RE.match(stem)
    return (m["case"], int(m["channel"])) if m else (stem, None)


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files skipped), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and image_suffix(p.name))


@dataclass(frozen=True)
class CaseRef:
    """Where one case's files are.

    Attributes:
        case_id: unique within a dataset; used as a folder name in prepared caches.
        image: an image file or a DICOM series folder.
        labels: a label file, or ``None`` for an unlabelled case.
        subset: ``"train"``/``"test"`` when the dataset itself says so (nnU-Net
            ``imagesTr``/``imagesTs``, MSD ``training``/``test``), else ``None``.
    """

    case_id: str
    image: Path
    labels: Path | None = None
    subset: str | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"case_id", "image", "labels", "subset"}`` with string paths."""
        return {
            "case_id": self.case_id,
            "image": str(self.image),
            "labels": None if self.labels is None else str(self.labels),
            "subset": self.subset,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CaseRef:
        """Inverse of :meth:`to_json`."""
        labels = d.get("labels")
        return cls(str(d["case_id"]), Path(d["image"]), None if labels is None else Path(labels), d.get("subset"))


@dataclass
class Case:
    """A loaded case: the image in HU and its labels on the image grid.

    Attributes:
        case_id: as in the :class:`CaseRef`.
        image: float32 ``(z, y, x)`` HU volume.
        labels: integer ``(z, y, x)`` volume on ``image.geometry``, or ``None``.
    """

    case_id: str
    image: Any  # ragsam.data.volume.Volume (not imported here: keeps this module SimpleITK-free)
    labels: Any | None


def load_case(ref: CaseRef, series_uid: str | None = None) -> Case:
    """Read a case's image (HU) and labels, the labels paired to the image by geometry.

    Args:
        ref: the case's files.
        series_uid: DICOM series to read when ``ref.image`` is a folder with several.
    Raises:
        InputError: unreadable files or labels that do not cover the image's voxels.
    """
    from ragsam.data.volume import read_image, read_labels

    image = read_image(ref.image, series_uid=series_uid)
    labels = None if ref.labels is None else read_labels(ref.labels, reference=image)
    return Case(case_id=ref.case_id, image=image, labels=labels)


def _listing(items: Iterable[str], limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_case_ids(refs: list[CaseRef], folder: str | os.PathLike) -> list[CaseRef]:
    """Refuse duplicate or unusable case ids; return ``refs`` sorted by case id.

    Raises:
        InputError: naming ``folder`` and the duplicated ids with their files.
    """
    seen: dict[str, CaseRef] = {}
    dupes: list[str] = []
    for ref in refs:
        if not ref.case_id or ref.case_id in (".", "..") or "/" in ref.case_id or "\\" in ref.case_id:
            raise InputError(folder, f"unusable case id {ref.case_id!r} (from {ref.image})")
        if ref.case_id in seen:
            dupes.append(f"{ref.case_id!r} ({seen[ref.case_id].image.name}, {ref.image.name})")
        seen[ref.case_id] = ref
    if dupes:
        raise InputError(folder, f"duplicate case ids: {_listing(dupes)}")
    return sorted(refs, key=lambda r: r.case_id)


def match_labels(
    images: dict[str, Path],
    labels: dict[str, Path],
    folder: str | os.PathLike,
    labels_expected: bool,
    subset: str | None = None,
) -> list[CaseRef]:
    """Join image and label files by case id.

    Args:
        images: case id -> image path.
        labels: case id -> label path.
        folder: the dataset folder (for messages).
        labels_expected: every image must have labels (a labels folder exists).
        subset: copied into every :class:`CaseRef`.
    Raises:
        InputError: images without labels (when expected) or labels without images.
    """
    if labels_expected:
        missing = sorted(set(images) - set(labels))
        if missing:
            raise InputError(folder, f"{len(missing)} image(s) have no label file: {_listing(missing)}")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise InputError(folder, f"{len(orphans)} label file(s) have no image: {_listing(orphans)}")
    return [CaseRef(cid, path, labels.get(cid), subset) for cid, path in images.items()]


def by_case_id(files: Iterable[Path], folder: Path, case_id_of) -> dict[str, Path]:
    """Map files to case ids with ``case_id_of(path) -> str``; refuse two files with one id."""
    out: dict[str, Path] = {}
    for path in files:
        cid = case_id_of(path)
        if cid in out:
            raise InputError(folder, f"duplicate case id {cid!r}: {out[cid].name} and {path.name}")
        out[cid] = path
    return out
