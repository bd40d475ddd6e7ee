"""Label maps: which integer id is which organ, built-in maps, the paper's subsets, remapping.

JSON format (the same as ``tests/assets/real-ct/labels-btcv.json``)::

    {"name": "btcv", "labels": {"0": "background", "1": "spleen", ...},
     "source_label_map": {"<other id scheme>": {"<source id>": <id here>, ...}}}

``source_label_map`` is optional: it says how to convert label volumes written in
another id scheme into this map (see :func:`remap_labels`). The nnU-Net v2
``dataset.json`` form ``"labels": {"background": 0, "liver": 1}`` is read too.

Built-ins:

* ``btcv``: the 13 BTCV organs (1 spleen ... 13 left adrenal gland).
* ``flare22``: the 13 FLARE 2022 organs (1 liver, 2 right kidney, 3 spleen, 4 pancreas,
  5 aorta, 6 inferior vena cava, 7/8 right/left adrenal gland, 9 gallbladder,
  10 esophagus, 11 stomach, 12 duodenum, 13 left kidney), the ids used by the
  challenge's labelled cases and by the public nnU-Net conversions of them.
* ``btcv-table1``: the 12 columns of the paper's Table 1. The table has a single
  ``AG`` column, so the right and left adrenal glands (BTCV 12, 13) are merged into
  one class ``adrenal glands`` (id 12); ids 1-11 are BTCV's.
* ``paper-8`` / ``paper-8:<base>``: the 8 organs of the paper's Tables 2-4 in their
  column order (1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 liver,
  6 stomach, 7 aorta, 8 pancreas), with a conversion from ``<base>`` (``btcv``,
  the default, or ``flare22``); the other base organs become background.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ragsam.errors import InputError
from ragsam.utils.atomic import write_json

BASE_MAPS = ("btcv", "flare22")
#: Tables 2-4 of the paper, column order.
PAPER_8 = ("spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas")
#: Table 1 of the paper: (class name, BTCV organs merged into it), column order.
BTCV_TABLE1: tuple[tuple[str, tuple[str, ...]], ...] = (
    *((name, (name,)) for name in (
        "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach",
        "aorta", "inferior vena cava", "portal vein and splenic vein", "pancreas",
    )),
    ("adrenal glands", ("right adrenal gland", "left adrenal gland")),
)
BUILTIN_NAMES = ("btcv", "flare22", "btcv-table1", "paper-8", "paper-8:btcv", "paper-8:flare22")

#: 20 visually distinct colours; label id ``i`` >= 1 gets ``PALETTE[(i - 1) % 20]``.
PALETTE: tuple[str, ...] = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
    "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000", "#ffd8b1",
    "#000075", "#a9a9a9",
)  # organ colours: reports, overlays, the app, DICOM SEG


@dataclass(frozen=True)
class LabelMap:
    """Names of the integer label ids of a segmentation.

    Attributes:
        name: short identifier (``"btcv"``) or a free-text title.
        labels: id -> organ name; always contains ``0`` (background).
        source_maps: optional conversions into this map, ``{scheme: {source id: id here}}``.
    """

    name: str
    labels: dict[int, str]
    source_maps: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def organ_ids(self) -> list[int]:
        """The non-background ids, ascending."""
        return sorted(i for i in self.labels if i != 0)

    @property
    def num_classes(self) -> int:
        """``max id + 1`` (background included): the number of model output channels."""
        return max(self.labels) + 1

    def id_of(self, organ: str) -> int:
        """The id of ``organ`` (case-insensitive name). Raises KeyError if absent."""
        wanted = organ.strip().lower()
        for i, name in self.labels.items():
            if name.lower() == wanted:
                return i
        raise KeyError(f"organ {organ!r} not in label map {self.name!r}")

    def to_json(self) -> dict[str, Any]:
        """The JSON form described in the module docstring."""
        out: dict[str, Any] = {"name": self.name, "labels": {str(i): self.labels[i] for i in sorted(self.labels)}}
        if self.source_maps:
            out["source_label_map"] = {
                k: {str(s): t for s, t in sorted(m.items())} for k, m in self.source_maps.items()
            }
        return out

    @classmethod
    def from_json(cls, d: Any, source: str | os.PathLike = "<label map>") -> LabelMap:
        """Parse and validate the JSON form (or an nnU-Net v2 ``labels`` dict).

        Raises:
            InputError: missing ``labels``, ids that are not integers >= 0, no ``0`` entry,
                repeated organ names, or a malformed ``source_label_map``.
        """
        if not isinstance(d, dict) or not isinstance(d.get("labels"), dict) or not d["labels"]:
            raise InputError(source, 'label map needs a non-empty "labels" object {"0": "background", ...}')
        raw = d["labels"]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
            raw = {str(v): k for k, v in raw.items()}  # nnU-Net v2: {"name": id}
        labels: dict[int, str] = {}
        for key, name in raw.items():
            ident = _as_id(key, source, "label id")
            if not isinstance(name, str) or not name.strip():
                raise InputError(source, f"label {key!r} needs a non-empty name, got {name!r}")
            labels[ident] = name.strip()
        if 0 not in labels:
            raise InputError(source, 'label map must name id 0 (e.g. "0": "background")')
        lowered = [n.lower() for n in labels.values()]
        dupes = sorted({n for n in lowered if lowered.count(n) > 1})
        if dupes:
            raise InputError(source, f"organ names used for more than one id: {', '.join(map(repr, dupes))}")
        maps: dict[str, dict[int, int]] = {}
        source_maps = d.get("source_label_map") or {}
        if not isinstance(source_maps, dict):
            raise InputError(source, 'source_label_map must be an object {"scheme": {source_id: target_id}}, '
                                     f"got {type(source_maps).__name__}")
        for scheme, mapping in source_maps.items():
            maps[str(scheme)] = parse_mapping(mapping, source)
            unknown = sorted(set(maps[str(scheme)].values()) - set(labels))
            if unknown:
                raise InputError(source, f"source_label_map {scheme!r} maps to ids {unknown} that are not in labels")
        name = str(d.get("name") or Path(str(source)).stem)
        return cls(name=name, labels=labels, source_maps=maps)


def _as_id(value: Any, source: str | os.PathLike, what: str) -> int:
    try:
        ident = int(str(value).strip())
    except ValueError:
        raise InputError(source, f"{what} {value!r} is not an integer") from None
    if ident < 0 or str(value).strip().lstrip("+") != str(ident):
        raise InputError(source, f"{what} {value!r} must be an integer >= 0")
    return ident


def parse_mapping(mapping: Any, source: str | os.PathLike) -> dict[int, int]:
    """Validate a ``{source_id: target_id}`` object (keys may be strings) into ints."""
    if not isinstance(mapping, dict) or not mapping:
        raise InputError(source, f"a label mapping must be a non-empty JSON object {{source_id: target_id}}, got {mapping!r}")
    return {_as_id(k, source, "source id"): _as_id(v, source, "target id") for k, v in mapping.items()}


def load_mapping(path: str | os.PathLike) -> dict[int, int]:
    """Read a mapping file: a JSON object ``{"<source id>": <target id>, ...}``."""
    return parse_mapping(_read_json(Path(path)), path)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(path, "does not exist" if not path.exists() else "is not a file")
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    except _DuplicateKey as exc:
        raise InputError(path, f"key {exc.args[0]!r} appears twice in one object (JSON keeps only the last)") from None


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` hook: a label map with a key written twice is a mistake, not a choice of the last one."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _builtin_base(name: str) -> LabelMap:
    text = resources.files("ragsam").joinpath("resources", f"label_map_{name}.json").read_text(encoding="utf-8")
    return LabelMap.from_json(json.loads(text), source=f"<built-in {name}>")


def subset_label_map(base: LabelMap, name: str, classes: tuple[tuple[str, tuple[str, ...]], ...]) -> LabelMap:
    """A new map with ids ``1..len(classes)`` and a conversion from ``base``.

    Args:
        base: the map the data is labelled with.
        name: the new map's name.
        classes: ``(class name, base organ names merged into it)`` in id order.
    Returns:
        A :class:`LabelMap` whose ``source_maps[base.name]`` maps every base id
        (unlisted organs to 0).
    """
    labels = {0: "background"}
    conversion = dict.fromkeys(base.labels, 0)
    for new_id, (class_name, members) in enumerate(classes, start=1):
        labels[new_id] = class_name
        for organ in members:
            conversion[base.id_of(organ)] = new_id
    return LabelMap(name=name, labels=labels, source_maps={base.name: conversion})


def load_label_map(name_or_path: str | os.PathLike | LabelMap) -> LabelMap:
    """A built-in label map by name (see module docstring) or a label-map JSON file.

    Raises:
        InputError: unknown name and no such file, or an invalid file.
    """
    if isinstance(name_or_path, LabelMap):
        return name_or_path
    key = str(name_or_path).strip().lower()
    if key in BASE_MAPS:
        return _builtin_base(key)
    if key == "btcv-table1":
        return subset_label_map(_builtin_base("btcv"), "btcv-table1", BTCV_TABLE1)
    if key.startswith("paper-8"):
        base = key.partition(":")[2] or "btcv"
        if base not in BASE_MAPS:
            raise InputError(None, f"label map {str(name_or_path)!r}: base must be one of {', '.join(BASE_MAPS)}")
        return subset_label_map(_builtin_base(base), f"paper-8:{base}", tuple((n, (n,)) for n in PAPER_8))
    path = Path(name_or_path)
    if not path.exists():
        raise InputError(
            path, f"not a built-in label map ({', '.join(BUILTIN_NAMES)}) and no such file"
        )
    return LabelMap.from_json(_read_json(path), source=path)


def save_label_map(label_map: LabelMap, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``label_map`` as JSON atomically. Returns ``path``."""
    return write_json(path, label_map.to_json(), force=force)


def label_dtype(max_value: int) -> np.dtype:
    """uint8 when ``max_value < 256``, else int16 (else int32 for very large ids)."""
    if max_value < 256:
        return np.dtype(np.uint8)
    if max_value <= np.iinfo(np.int16).max:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def present_ids(array: np.ndarray) -> list[int]:
    """The distinct ids in an integer label array, ascending (bincount: fast for uint8/int16)."""
    flat = np.asarray(array).ravel()
    if flat.size == 0:
        return []
    if flat.dtype.kind in "iu" and flat.min() >= 0 and flat.max() < 1 << 16:
        return [int(i) for i in np.flatnonzero(np.bincount(flat))]
    return [int(i) for i in np.unique(flat)]


def remap_labels(
    array: np.ndarray,
    mapping: dict[int, int],
    unmapped: str = "error",
    source: str | os.PathLike | None = None,
) -> np.ndarray:
    """Convert label ids with ``mapping`` (``{source id: target id}``).

    Args:
        array: integer labels >= 0, any shape.
        mapping: conversion table; background 0 maps to 0 unless it is listed.
        unmapped: what happens to ids present in ``array`` but absent from ``mapping``:
            ``"error"`` (default, a typo must not silently delete an organ) or
            ``"background"`` (they become 0).
        source: the file the labels came from, for the error message.
    Returns:
        The converted array (same shape), uint8 if every target id < 256 else int16/int32.
    Raises:
        InputError: unmapped ids with ``unmapped="error"``.
    """
    if unmapped not in ("error", "background"):
        raise ValueError(f"unmapped must be 'error' or 'background', got {unmapped!r}")
    present = present_ids(array)
    table = {0: 0, **mapping}
    missing = [i for i in present if i not in table]
    if missing and unmapped == "error":
        raise InputError(source, f"label ids {missing} have no entry in the label mapping (mapped ids: {sorted(table)})")
    top = max([*table.values(), 0])
    lut = np.zeros(max([*present, *table.keys()]) + 1, dtype=label_dtype(top))
    for src, dst in table.items():
        lut[src] = dst
    return lut[np.asarray(array)]


def check_label_ids(volume: Any, label_map: LabelMap) -> list[int]:
    """Refuse label ids that ``label_map`` does not name.

    Args:
        volume: a :class:`ragsam.data.volume.Volume` of labels (``.array``, ``.path``).
        label_map: the map the labels should follow.
    Returns:
        The ids present, ascending.
    Raises:
        InputError: naming the file, the unknown ids and the map's ids.
    """
    present = present_ids(volume.array)
    unknown = [i for i in present if i not in label_map.labels]
    if unknown:
        raise InputError(
            volume.path,
            f"label ids {unknown} are not in label map {label_map.name!r} (ids {sorted(label_map.labels)})",
        )
    return present
