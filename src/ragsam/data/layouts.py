"""Dataset layouts: find the cases (image + optional labels) in a folder.

Accepted layouts (``layout=`` name, what is read):

* ``nnunet``: nnU-Net raw, ``imagesTr/<case>_0000<ending>`` + ``labelsTr/<case><ending>``,
  also ``imagesTs`` (+ optional ``labelsTs``); ``dataset.json`` (v2: ``file_ending``,
  ``channel_names``, ``numTraining``) is checked when present. Only single-channel (CT) data.
* ``msd``: Medical Segmentation Decathlon / nnU-Net v1 ``dataset.json`` with
  ``"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]`` and
  optional ``"test": ["./imagesTs/y.nii.gz"]``. Every path must stay inside the dataset
  folder; a listed ``x.nii.gz`` that only exists as ``x_0000.nii.gz`` (nnU-Net v1) is found.
* ``btcv``: ``img/imgXXXX.nii.gz`` + ``label/labelXXXX.nii.gz``, directly or below
  ``Training/``, ``RawData/Training/`` or ``Abdomen/RawData/Training/``; case id ``XXXX``.
* ``flare22``: ``images/FLARE22_Tr_XXXX_0000.nii.gz`` + ``labels/FLARE22_Tr_XXXX.nii.gz``
  (directly or below ``FLARE22_LabeledCase50/``); case id ``FLARE22_Tr_XXXX``.
* ``pairs``: (a) an image folder (``images``, ``image``, ``imgs``, ``ct``, ``scans``,
  ``volumes``) and a label folder (``labels``, ``label``, ``masks``, ``mask``,
  ``segmentations``, ``seg``, ``gt``) with files named by case id (an ``_0000`` channel
  suffix or an ``_image``/``_img``/``_ct`` tag on images and a ``_label``/``_labels``/``_seg``/
  ``_mask``/``_gt`` tag on labels are ignored when matching); (b) one folder of
  ``<id>_image.nii.gz`` + ``<id>_label.nii.gz`` style files (same tags); (c) one
  sub-folder per case holding an image (``ct``, ``image``, ``img``, ``imaging``, ``volume``
  file, or a DICOM folder ``dicom``/``DICOM``) and optional labels (``labels``, ``label``,
  ``seg``, ``segmentation``, ``mask``, ``gt``), or a DICOM series directly (unlabelled);
  (d) a folder of images only (unlabelled); (e) one such case folder itself (case id =
  folder name; other files in it, e.g. ``labels-totalsegmentator.nii.gz``, are ignored).
* ``file``: a single image file; ``dicom``: a folder holding a DICOM series.

Labels are expected for every image as soon as the layout has a labels folder (or
labelled files): a missing one is an error, as are labels without an image, duplicate
case ids and empty folders. Cases come back sorted by case id.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ragsam.data.cases import (
    IMAGE_SUFFIXES,
    CaseRef,
    by_case_id,
    check_case_ids,
    image_files,
    image_suffix,
    match_labels,
    split_channel,
    strip_suffix,
)
from ragsam.errors import InputError
from ragsam.utils.paths import resolve_inside

LAYOUTS = ("auto", "nnunet", "msd", "btcv", "flare22", "pairs", "file", "dicom")
BTCV_BASES = (".", "Training", "RawData/Training", "Abdomen/RawData/Training")
FLARE22_BASES = (".", "FLARE22_LabeledCase50")
IMAGE_DIRS = ("images", "image", "imgs", "ct", "scans", "volumes")
LABEL_DIRS = ("labels", "label", "masks", "mask", "segmentations", "seg", "gt")
IMAGE_TAGS = ("_image", "_img", "_ct")
LABEL_TAGS = ("_labels", "_label", "_seg", "_mask", "_gt")
CASE_IMAGE_NAMES = ("ct", "image", "img", "imaging", "volume")
CASE_LABEL_NAMES = ("labels", "label", "seg", "segmentation", "mask", "gt")


def _image_case_id(path: Path, folder: Path) -> str:
    """Case id of an image file: name without ending, channel suffix (only ``_0000``) or image tag."""
    stem, channel = split_channel(strip_suffix(path.name))
    if channel not in (None, 0):
        raise InputError(folder, f"{path.name} is channel {channel}; only single-channel CT datasets are supported")
    for tag in IMAGE_TAGS:
        if stem.lower().endswith(tag) and len(stem) > len(tag):
            return stem[: -len(tag)]
    return stem


def _label_case_id(path: Path) -> str:
    stem = strip_suffix(path.name)
    for tag in LABEL_TAGS:
        if stem.lower().endswith(tag) and len(stem) > len(tag):
            return stem[: -len(tag)]
    return stem


def _read_dataset_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "must hold a JSON object")
    return data


def _nnunet(root: Path) -> list[CaseRef]:
    meta_path = root / "dataset.json"
    meta = _read_dataset_json(meta_path) if meta_path.is_file() else {}
    channels = meta.get("channel_names") or meta.get("modality") or {}
    if isinstance(channels, dict) and len(channels) > 1:
        raise InputError(meta_path, f"has {len(channels)} channels {channels}; only single-channel CT is supported")
    ending = meta.get("file_ending")

    def files(folder: Path) -> list[Path]:
        found = image_files(folder)
        return [p for p in found if p.name.endswith(ending)] if ending else found

    if not (root / "imagesTr").is_dir():
        raise InputError(root, "nnU-Net layout needs an imagesTr folder")
    refs: list[CaseRef] = []
    for part, subset in (("Tr", "train"), ("Ts", "test")):
        img_dir, lab_dir = root / f"images{part}", root / f"labels{part}"
        if not img_dir.is_dir():
            continue
        images = by_case_id(files(img_dir), img_dir, lambda p, d=img_dir: _image_case_id(p, d))
        labels = by_case_id(files(lab_dir), lab_dir, _label_case_id) if lab_dir.is_dir() else {}
        refs += match_labels(images, labels, root, labels_expected=lab_dir.is_dir(), subset=subset)
    n_train = sum(r.subset == "train" for r in refs)
    if "numTraining" in meta and meta["numTraining"] != n_train:
        raise InputError(meta_path, f"numTraining is {meta['numTraining']!r} but imagesTr holds {n_train} case(s)")
    return refs


def _msd_path(root: Path, rel: Any, meta_path: Path, what: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise InputError(meta_path, f"{what} path must be a non-empty string, got {rel!r}")
    path = resolve_inside(root, rel, meta_path)
    if path.exists():
        return path
    suffix = image_suffix(path.name)
    if what == "image" and suffix:  # nnU-Net v1 lists x.nii.gz for the file x_0000.nii.gz
        channel0 = path.with_name(strip_suffix(path.name) + "_0000" + suffix)
        if channel0.exists():
            return channel0
    raise InputError(meta_path, f"lists {what} {rel!r}, which does not exist")


def _msd(root: Path) -> list[CaseRef]:
    meta_path = root / "dataset.json"
    meta = _read_dataset_json(meta_path)
    training = meta.get("training")
    if not isinstance(training, list):
        raise InputError(meta_path, 'needs a "training" list of {"image": ..., "label": ...} entries')
    refs = []
    for subset, entries in (("train", training), ("test", meta.get("test") or [])):
        for entry in entries:
            if isinstance(entry, str):
                entry = {"image": entry}
            if not isinstance(entry, dict):
                raise InputError(meta_path, f"{subset} entry {entry!r} must be an object or a path string")
            image = _msd_path(root, entry.get("image"), meta_path, "image")
            label_rel = entry.get("label")
            labels = None if label_rel is None else _msd_path(root, label_rel, meta_path, "label")
            refs.append(CaseRef(_image_case_id(image, root), image, labels, subset))
    return refs


def _find_base(root: Path, bases: tuple[str, ...], marker: str) -> Path | None:
    for base in bases:
        if (root / base / marker).is_dir():
            return (root / base).resolve() if base != "." else root
    return None


def _btcv(root: Path) -> list[CaseRef]:
    base = _find_base(root, BTCV_BASES, "img")
    if base is None:
        raise InputError(root, f"BTCV layout needs an img folder (directly or below {', '.join(BTCV_BASES[1:])})")

    def cid(prefix: str):
        return lambda p: strip_suffix(p.name)[len(prefix):] if p.name.startswith(prefix) else strip_suffix(p.name)

    images = by_case_id(image_files(base / "img"), base / "img", cid("img"))
    lab_dir = base / "label"
    labels = by_case_id(image_files(lab_dir), lab_dir, cid("label")) if lab_dir.is_dir() else {}
    return match_labels(images, labels, base, labels_expected=lab_dir.is_dir())


def _folder_pair(img_dir: Path, lab_dir: Path | None, folder: Path) -> list[CaseRef]:
    images = by_case_id(image_files(img_dir), img_dir, lambda p: _image_case_id(p, img_dir))
    labels = by_case_id(image_files(lab_dir), lab_dir, _label_case_id) if lab_dir else {}
    return match_labels(images, labels, folder, labels_expected=lab_dir is not None)


def _flare22(root: Path) -> list[CaseRef]:
    base = _find_base(root, FLARE22_BASES, "images")
    if base is None:
        raise InputError(root, "FLARE22 layout needs an images folder (and labels)")
    lab_dir = base / "labels"
    return _folder_pair(base / "images", lab_dir if lab_dir.is_dir() else None, base)


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _looks_like_dicom_folder(folder: Path) -> bool:
    """Cheap test: the first file carries the DICOM preamble marker ``DICM`` at byte 128."""
    first = next((p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")), None)
    if first is None:
        return False
    with open(first, "rb") as fh:
        return fh.read(132)[128:132] == b"DICM"


def _case_folder(folder: Path, allow_bare_dicom: bool = True) -> CaseRef | None:
    """A per-case folder (layout pairs (c)), or ``None`` when it holds no recognised image."""
    by_name = {strip_suffix(p.name).lower(): p for p in image_files(folder)}
    image = next((by_name[n] for n in CASE_IMAGE_NAMES if n in by_name), None)
    if image is None:
        image = next((folder / d for d in ("dicom", "DICOM") if (folder / d).is_dir()), None)
    if image is None and allow_bare_dicom and not by_name and _looks_like_dicom_folder(folder):
        return CaseRef(folder.name, folder)
    if image is None:
        return None
    labels = next((by_name[n] for n in CASE_LABEL_NAMES if n in by_name), None)
    return CaseRef(folder.name, image, labels)


def _pairs(root: Path) -> list[CaseRef]:
    img_dir = _first_dir(root, IMAGE_DIRS)
    if img_dir is not None:
        return _folder_pair(img_dir, _first_dir(root, LABEL_DIRS), root)
    single = _case_folder(root, allow_bare_dicom=False)
    if single is not None:
        return [single]
    files = image_files(root)
    if files:
        label_files = [p for p in files if _label_case_id(p) != strip_suffix(p.name)]
        image_only = [p for p in files if p not in label_files]
        images = by_case_id(image_only, root, lambda p: _image_case_id(p, root))
        labels = by_case_id(label_files, root, _label_case_id)
        return match_labels(images, labels, root, labels_expected=bool(labels))
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    refs = [ref for ref in (_case_folder(d) for d in subdirs) if ref is not None]
    if refs and any(r.labels is not None for r in refs):
        unlabeled = [r.case_id for r in refs if r.labels is None]
        if unlabeled:
            raise InputError(root, f"{len(unlabeled)} case folder(s) have no label file: {', '.join(unlabeled[:5])}")
    return refs


def detect_layout(path: str | os.PathLike) -> str:
    """The layout name that ``discover_cases(path, "auto")`` uses (see module docstring).

    Raises:
        InputError: ``path`` does not exist or is an empty folder.
    """
    root = Path(path)
    if not root.exists():
        raise InputError(root, "does not exist")
    if root.is_file():
        return "file"
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError(root, "folder is empty")
    meta = root / "dataset.json"
    if meta.is_file() and isinstance(_read_dataset_json(meta).get("training"), list):
        return "msd"
    if (root / "imagesTr").is_dir():
        return "nnunet"
    if _find_base(root, BTCV_BASES, "img") is not None:
        return "btcv"
    base = _find_base(root, FLARE22_BASES, "images")
    if base is not None and any(p.name.startswith("FLARE22") for p in image_files(base / "images")):
        return "flare22"
    has_images = bool(image_files(root)) or _first_dir(root, IMAGE_DIRS) is not None
    if not has_images and any(p.is_file() for p in entries):
        from ragsam.data.dicom import has_dicom_series  # SimpleITK only for folders that may be DICOM

        if has_dicom_series(root):
            return "dicom"
    return "pairs"


def single_file_case_id(path: Path) -> str:
    """The case id of one image file, the same id its dataset folder would give it.

    A BTCV image ``img0001.nii.gz`` is case ``0001`` (as in the BTCV folder layout, so a
    prediction of the file and of the folder are both ``0001.nii.gz``); other names follow
    the pairs/nnU-Net rules (``_0000`` channel suffix and ``_ct``/``_image`` tags dropped).
    """
    btcv = re.fullmatch(r"img(\d+)", strip_suffix(path.name))
    return btcv[1] if btcv else _image_case_id(path, path.parent)


def discover_cases(path: str | os.PathLike, layout: str = "auto") -> list[CaseRef]:
    """Find the cases of a dataset folder, a single image file or a DICOM series folder.

    Args:
        path: the dataset root (or image file / DICOM folder).
        layout: one of :data:`LAYOUTS`; ``"auto"`` detects it (:func:`detect_layout`).
    Returns:
        :class:`CaseRef` list sorted by case id (labels ``None`` for unlabelled cases).
    Raises:
        InputError: unknown layout, missing/empty folder, no cases, duplicate case ids,
            images without labels where labels are expected, labels without images,
            paths escaping the dataset folder.
    """
    root = Path(path)
    if layout not in LAYOUTS:
        raise InputError(None, f"unknown dataset layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    chosen = detect_layout(root) if layout == "auto" else layout
    if not root.exists():
        raise InputError(root, "does not exist")
    if chosen == "file":
        if not root.is_file() or not image_suffix(root.name):
            raise InputError(root, f"not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
        refs = [CaseRef(single_file_case_id(root), root)]
    elif chosen == "dicom":
        from ragsam.data.dicom import list_series

        list_series(root)  # refuses empty folders and folders without DICOM
        refs = [CaseRef(root.resolve().name, root)]
    elif not root.is_dir():
        raise InputError(root, f"layout {chosen!r} needs a folder")
    else:
        finder = {"nnunet": _nnunet, "msd": _msd, "btcv": _btcv, "flare22": _flare22, "pairs": _pairs}[chosen]
        refs = finder(root)
    if not refs:
        raise InputError(root, f"no cases found (layout {chosen!r}; see `ragsam prepare --help` for accepted layouts)")
    return check_case_ids(refs, root)

