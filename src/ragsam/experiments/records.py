"""The experiment runner's own files, typed and versioned: ``plan.json`` and each variant's ``done.json``.

``plan.json`` (in the work folder) records the resolved plan and settings; a re-run must
match them. ``done.json`` (in a variant's folder) is a finished variant's
:class:`VariantResult`; its presence means finished. Both carry ``format_version``
(a file written before versions were recorded is version 1); nothing else reads them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ragsam.errors import InputError
from ragsam.utils.atomic import write_json
from ragsam.utils.formats import check_format_version, read_json_object

RECORD_VERSION = 1
RECORD_VERSIONS = (1,)
PLAN_FILE = "plan.json"
DONE_FILE = "done.json"
REBUILD = "start the plan again with `ragsam experiment ... --force`"


def _read_record(path: Path, parse: Callable[[dict[str, Any], Path], Any]) -> Any:
    """``parse`` of the JSON object in ``path``, or ``None`` when there is no such file."""
    return parse(read_json_object(path, "missing"), path) if path.is_file() else None


@dataclass
class VariantResult:
    """A finished variant: per-organ mean Dice (organ name -> [0, 1]) and its trainable weights.

    ``trainable_mib``: bytes of the saved trainable tensors / 2^20 (the paper's "model size").
    """

    name: str
    dice: dict[str, float]
    trainable_parameters: int | None
    predictions: str
    trainable_mib: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The content of ``done.json``."""
        return {"format_version": RECORD_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any], path: str | os.PathLike = DONE_FILE) -> VariantResult:
        """Parse ``done.json``'s content ``d`` (``path`` is named in messages)."""
        check_format_version(path, d.get("format_version"), RECORD_VERSIONS, REBUILD)
        try:
            mib = d.get("trainable_mib")
            params = d["trainable_parameters"]
            return cls(name=str(d["name"]), dice={str(k): float(v) for k, v in d["dice"].items()},
                       trainable_parameters=None if params is None else int(params),
                       predictions=str(d["predictions"]), trainable_mib=None if mib is None else float(mib))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"malformed variant record ({exc!r}); {REBUILD}") from None

    @classmethod
    def read(cls, variant_dir: str | os.PathLike) -> VariantResult | None:
        """The finished variant recorded in ``variant_dir``, or ``None`` when it has not finished."""
        return _read_record(Path(variant_dir) / DONE_FILE, cls.from_json)

    def write(self, variant_dir: str | os.PathLike) -> Path:
        """Write ``done.json`` (atomically) into ``variant_dir``."""
        return write_json(Path(variant_dir) / DONE_FILE, self.to_json(), force=True)


def is_done(variant_dir: str | os.PathLike) -> bool:
    """Whether ``variant_dir`` holds a finished variant (its ``done.json``)."""
    return (Path(variant_dir) / DONE_FILE).is_file()


def forget_done(variant_dir: str | os.PathLike) -> None:
    """Mark a variant unfinished (``--force``)."""
    (Path(variant_dir) / DONE_FILE).unlink(missing_ok=True)


@dataclass
class PlanRecord:
    """``plan.json``: the resolved plan and settings a work folder was started with (plain JSON values)."""

    plan: dict[str, Any]
    settings: dict[str, Any]
    format_version: int = RECORD_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "plan": self.plan, "settings": self.settings}

    @classmethod
    def of(cls, plan: Any, settings: Any) -> PlanRecord:
        """The record of a :class:`~ragsam.experiments.plans.Plan` and its settings (dataclasses)."""
        return cls(json.loads(json.dumps(asdict(plan))), json.loads(json.dumps(asdict(settings))))

    @classmethod
    def from_json(cls, d: dict[str, Any], path: str | os.PathLike = PLAN_FILE) -> PlanRecord:
        version = check_format_version(path, d.get("format_version"), RECORD_VERSIONS, REBUILD)
        if not isinstance(d.get("plan"), dict) or not isinstance(d.get("settings"), dict):
            raise InputError(path, f"malformed plan record (no plan / settings); {REBUILD}")
        return cls(d["plan"], d["settings"], version)

    @classmethod
    def read(cls, out: str | os.PathLike) -> PlanRecord | None:
        """The record in work folder ``out``, or ``None`` when there is none yet."""
        return _read_record(Path(out) / PLAN_FILE, cls.from_json)

    def check_and_write(self, out: str | os.PathLike, force: bool) -> None:
        """Refuse a work folder started with another plan or settings (unless ``force``), then record this one."""
        path = Path(out) / PLAN_FILE
        previous = None if force else PlanRecord.read(out)
        if previous is not None and (previous.plan, previous.settings) != (self.plan, self.settings):
            raise InputError(path, "this folder holds a run of another plan or other settings "
                                   "(use another --out, or --force to start it again)")
        write_json(path, self.to_json(), force=True)
