"""``CacheMeta``: the typed ``prepare.json`` of a prepared slice cache.

``ragsam prepare`` writes it twice: first *incomplete* (listing only the cases it
may reuse), then complete with every case's inputs and slice count. Every
reader (training, banks, baselines, the demo, the CLI) goes through
:meth:`CacheMeta.read`; nothing else parses the file.

On disk (keys in this order)::

    format              "ragsam-slice-cache"
    version             format version (CACHE_VERSION; a file without one is version 1)
    complete            false while ragsam prepare runs
    ragsam              the ragsam version that wrote it
    source, layout      the dataset folder and its layout
    label_map           the label map (LabelMap.to_json)
    settings            the slice settings (SliceSettings.to_json: window HU, size px, context)
    series_uid, split, seed
    skipped_unlabelled  case ids without labels (once complete)
    cases               {case_id: {key, image, labels, files, slices}} (image/labels/slices once complete)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragsam.errors import InputError
from ragsam.utils.atomic import write_json
from ragsam.utils.formats import check_format, check_format_version, read_json_object

if TYPE_CHECKING:
    from ragsam.data.slices import SliceSettings

CACHE_FORMAT = "ragsam-slice-cache"
CACHE_VERSION = 1
CACHE_VERSIONS = (1,)
META_FILE = "prepare.json"
REBUILD = "rebuild the cache with `ragsam prepare --force`"


@dataclass
class CachedCase:
    """One case of the cache.

    Attributes:
        key: fingerprint of the inputs and settings (reuse is decided on it).
        files: the input files' fingerprints as ``ragsam prepare`` recorded them.
        image, labels: absolute paths of the original image and label files (complete caches).
        slices: number of cached slices (complete caches).
    """

    key: str
    files: list[Any] = field(default_factory=list)
    image: str | None = None
    labels: str | None = None
    slices: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key}
        if self.image is not None:
            out["image"] = self.image
        if self.labels is not None:
            out["labels"] = self.labels
        out["files"] = self.files
        if self.slices is not None:
            out["slices"] = self.slices
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CachedCase:
        return cls(key=str(d.get("key", "")), files=list(d.get("files") or []), image=d.get("image"),
                   labels=d.get("labels"), slices=None if d.get("slices") is None else int(d["slices"]))


@dataclass
class CacheMeta:
    """What ``prepare.json`` records (see the module docstring for the file)."""

    settings: dict[str, Any]
    label_map: dict[str, Any]
    cases: dict[str, CachedCase] = field(default_factory=dict)
    complete: bool = False
    ragsam: str = ""
    source: str = ""
    layout: str = ""
    series_uid: str | None = None
    split: Any = None
    seed: int | None = None
    skipped_unlabelled: list[str] | None = None
    format_version: int = CACHE_VERSION

    @property
    def slice_settings(self) -> SliceSettings:
        """The HU window, slice size and context every query volume must be sliced with."""
        # imported here: data.slices imports data.slice_dataset, which imports this module
        from ragsam.data.slices import SliceSettings

        return SliceSettings.from_json(self.settings)

    @property
    def label_names(self) -> dict[int, str]:
        """``{label id: organ name}`` of the cache's label map (0 = background)."""
        return {int(k): str(v) for k, v in self.label_map.get("labels", {}).items()}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": CACHE_FORMAT, "version": self.format_version, "complete": self.complete,
            "ragsam": self.ragsam, "source": self.source, "layout": self.layout, "label_map": self.label_map,
            "settings": self.settings, "series_uid": self.series_uid, "split": self.split, "seed": self.seed,
        }
        if self.skipped_unlabelled is not None:
            out["skipped_unlabelled"] = self.skipped_unlabelled
        out["cases"] = {cid: c.to_json() for cid, c in self.cases.items()}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], path: str | os.PathLike = META_FILE) -> CacheMeta:
        """The metadata in ``d``, the content of ``path`` (named in messages).

        Raises:
            InputError: another format, an unsupported version, or a malformed field.
        """
        check_format(path, d, CACHE_FORMAT, "slice cache")
        version = check_format_version(path, d.get("version"), CACHE_VERSIONS, REBUILD)
        try:
            cases = {str(cid): CachedCase.from_json(c) for cid, c in (d.get("cases") or {}).items()}
            return cls(settings=dict(d.get("settings") or {}), label_map=dict(d.get("label_map") or {}),
                       cases=cases, complete=bool(d.get("complete", False)), ragsam=str(d.get("ragsam", "")),
                       source=str(d.get("source", "")), layout=str(d.get("layout", "")),
                       series_uid=d.get("series_uid"), split=d.get("split"), seed=d.get("seed"),
                       skipped_unlabelled=d.get("skipped_unlabelled"), format_version=version)
        except (AttributeError, TypeError, ValueError) as exc:
            raise InputError(path, f"malformed cache description ({exc}); {REBUILD}") from None

    @classmethod
    def read(cls, prepared_dir: str | os.PathLike) -> CacheMeta:
        """``prepare.json`` of a complete cache.

        Raises:
            InputError: not a ragsam slice cache, an unsupported version, or one whose
                ``ragsam prepare`` did not finish.
        """
        path = Path(prepared_dir) / META_FILE
        if not path.is_file():
            raise InputError(prepared_dir, f"not a prepared slice cache (no {META_FILE}); run `ragsam prepare` first")
        meta = cls.from_json(read_json_object(path, "missing; run `ragsam prepare` first"), path)
        if not meta.complete:
            raise InputError(prepared_dir, "slice cache is incomplete (ragsam prepare was interrupted); run it again")
        return meta

    @classmethod
    def peek(cls, out_dir: str | os.PathLike) -> tuple[bool, CacheMeta | None]:
        """``(is a ragsam cache, its metadata if this version reads it)`` for a folder ``prepare`` writes into."""
        path = Path(out_dir) / META_FILE
        try:
            raw = read_json_object(path, "missing")
        except InputError:
            return False, None
        if raw.get("format") != CACHE_FORMAT:
            return False, None
        try:
            return True, cls.from_json(raw, path)
        except InputError:
            return True, None  # another version: rebuild everything

    def write(self, out_dir: str | os.PathLike) -> Path:
        """Write ``<out_dir>/prepare.json`` atomically."""
        return write_json(Path(out_dir) / META_FILE, self.to_json())
