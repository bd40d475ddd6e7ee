"""SNOMED CT codes of the organs for DICOM SEG segments, from the packaged table ``snomed_organs.json``.

Each organ name of the built-in label maps (BTCV, FLARE22 and the paper's merged classes) has a
segmentation category (DICOM CID 7150), a type and, for paired organs, a laterality modifier
(CID 244); the table's ``sources`` say where each code comes from. highdicom is imported only
by :meth:`Coded.concept`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from ragsam.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ragsam.data.label_maps import LabelMap

#: The SNOMED CT table of the organs (category, type, modifier per organ name).
CODES_RESOURCE = "snomed_organs.json"


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


def as_label_map(label_map: Any) -> LabelMap:
    """A :class:`~ragsam.data.label_maps.LabelMap` from one, a built-in name / JSON path, or ``{id: name}``."""
    from ragsam.data.label_maps import LabelMap, load_label_map

    if isinstance(label_map, LabelMap):
        return label_map
    if isinstance(label_map, Mapping):
        return LabelMap("custom", {int(k): str(v) for k, v in label_map.items()} | {0: "background"})
    return load_label_map(label_map)
