"""``BankInfo``: the typed ``bank.json`` of a support bank.

Written by :func:`ragsam.retrieval.bank_build.build_bank`, read by
:meth:`ragsam.retrieval.bank.SupportBank.load` through :meth:`BankInfo.read`;
nothing else parses the file. On disk (keys in this order)::

    format, version          "ragsam-support-bank", BANK_VERSION (a file without one is version 1)
    prepared_dir             absolute path of the prepared cache
    prepared_dir_relative    the same, relative to the bank folder (found again after a move)
    prepare_sha256           SHA-256 of the cache's prepare.json at build time
    case_keys                {case_id: prepare's fingerprint} of the embedded cases
    slice_size               cached slice side (px)
    kind, dim, count         resolved index kind, embedding dimension D, number of vectors
    cases, case_depths       embedded case ids and their slice counts
    labelled_cases           the cases whose slices can serve as supports
    settings                 labelled_only, split, batch_size, pooling, image_size, index settings
    created                  UTC time of the build (ISO 8601)
    addition_counter         number of the last addition (ragsam.retrieval.bank_edit; once slices were added)
    additions                [{id, source, source_slices, organs, added_by, added}] (once slices were added)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragsam.errors import InputError
from ragsam.utils.atomic import write_json
from ragsam.utils.formats import check_format, check_format_version, read_json_object

BANK_FORMAT = "ragsam-support-bank"
BANK_VERSION = 1
BANK_VERSIONS = (1,)
INFO_FILE = "bank.json"
REBUILD = "rebuild the bank with `ragsam index build --force`"


@dataclass
class BankInfo:
    """What ``bank.json`` records (see the module docstring for each field)."""

    prepared_dir: str
    prepared_dir_relative: str
    prepare_sha256: str
    kind: str
    dim: int
    count: int
    slice_size: int
    cases: list[str] = field(default_factory=list)
    case_keys: dict[str, str] = field(default_factory=dict)
    case_depths: dict[str, int] = field(default_factory=dict)
    labelled_cases: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    addition_counter: int | None = None
    additions: list[dict[str, Any]] | None = None
    format_version: int = BANK_VERSION

    @property
    def index_settings(self) -> dict[str, Any]:
        """The index's kind and search settings (``nprobe``, ``ef_search``) as built."""
        return dict(self.settings.get("index") or {})

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BANK_FORMAT, "version": self.format_version,
            "prepared_dir": self.prepared_dir, "prepared_dir_relative": self.prepared_dir_relative,
            "prepare_sha256": self.prepare_sha256, "case_keys": self.case_keys, "slice_size": self.slice_size,
            "kind": self.kind, "dim": self.dim, "count": self.count, "cases": self.cases,
            "case_depths": self.case_depths, "labelled_cases": self.labelled_cases, "settings": self.settings,
            "created": self.created,
            **({} if self.addition_counter is None else {"addition_counter": self.addition_counter}),
            **({} if self.additions is None else {"additions": self.additions}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], path: str | os.PathLike = INFO_FILE) -> BankInfo:
        """Parse ``d`` (the file's content); ``path`` is named in messages.

        Raises:
            InputError: not a ragsam bank, an unsupported version, or a malformed field.
        """
        check_format(path, d, BANK_FORMAT, "support bank")
        version = check_format_version(path, d.get("version"), BANK_VERSIONS, REBUILD)
        try:
            return cls(prepared_dir=str(d.get("prepared_dir", "")),
                       prepared_dir_relative=str(d.get("prepared_dir_relative", "")),
                       prepare_sha256=str(d.get("prepare_sha256", "")), kind=str(d.get("kind")),
                       dim=int(d.get("dim", 0)), count=int(d.get("count", 0)), slice_size=int(d.get("slice_size", 0)),
                       cases=[str(c) for c in d.get("cases") or []],
                       case_keys={str(k): str(v) for k, v in (d.get("case_keys") or {}).items()},
                       case_depths={str(k): int(v) for k, v in (d.get("case_depths") or {}).items()},
                       labelled_cases=[str(c) for c in d.get("labelled_cases") or []],
                       settings=dict(d.get("settings") or {}), created=str(d.get("created", "")),
                       addition_counter=None if d.get("addition_counter") is None else int(d["addition_counter"]),
                       additions=None if d.get("additions") is None else [dict(a) for a in d["additions"]],
                       format_version=version)
        except (AttributeError, TypeError, ValueError) as exc:
            raise InputError(path, f"malformed bank description ({exc}); {REBUILD}") from None

    @classmethod
    def read(cls, bank_dir: str | os.PathLike) -> BankInfo:
        """``<bank_dir>/bank.json``.

        Raises:
            InputError: missing, not JSON, not a bank, or an unsupported version.
        """
        path = Path(bank_dir) / INFO_FILE
        raw = read_json_object(path, "not a support bank (bank.json missing); build one with `ragsam index build`")
        return cls.from_json(raw, path)

    def write(self, bank_dir: str | os.PathLike) -> Path:
        """Write ``<bank_dir>/bank.json`` atomically."""
        return write_json(Path(bank_dir) / INFO_FILE, self.to_json())
