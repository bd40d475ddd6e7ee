"""What an evaluation produced, as types: :class:`MetricRow` per case x organ, :class:`EvaluationResult`,
and their :class:`AggregateTable` (numpy only; :mod:`ragsam.evaluation.evaluate` fills them,
:mod:`ragsam.evaluation.report` writes them).

The aggregate table follows the paper's layout: organs as columns, the mean
last; rows Dice (%), HD95 (mm) and NSD (%). Each organ's value is the mean over
the cases where the metric is defined (NaN = "n/a" is left out, see
:mod:`ragsam.evaluation.metrics`); the Mean column is the mean of the organ
means (the paper's Eq. 4: average over classes), again leaving out organs that
are "n/a" in every case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("dice", "hd95", "nsd")


@dataclass(frozen=True)
class AggregateTable:
    """Per-organ means over cases (``dice``/``nsd`` fractions, ``hd95`` mm or voxels).

    Each of ``mean``, ``std`` and ``n`` maps a metric name to one value per organ
    (in ``organ_ids`` order); ``overall`` maps a metric name to the mean over organs.
    """

    organ_ids: list[int]
    organ_names: list[str]
    mean: dict[str, list[float]]
    std: dict[str, list[float]]
    n: dict[str, list[int]]
    overall: dict[str, float]


def nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (NaN when none is)."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _nanstd(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.std(finite)) if finite else float("nan")


def aggregate(rows: Sequence[MetricRow], organ_ids: Sequence[int], organ_names: Sequence[str]) -> AggregateTable:
    """Average per-case rows into the organ x metric table (see module docstring)."""
    mean: dict[str, list[float]] = {m: [] for m in METRICS}
    std: dict[str, list[float]] = {m: [] for m in METRICS}
    n: dict[str, list[int]] = {m: [] for m in METRICS}
    for oid in organ_ids:
        organ_rows = [r for r in rows if r.organ_id == oid]
        for m in METRICS:
            values = [float(getattr(r, m)) for r in organ_rows]
            mean[m].append(nanmean(values))
            std[m].append(_nanstd(values))
            n[m].append(sum(not math.isnan(v) for v in values))
    overall = {m: nanmean(mean[m]) for m in METRICS}
    return AggregateTable(list(organ_ids), list(organ_names), mean, std, n, overall)


@dataclass(frozen=True)
class CasePaths:
    """The files of one case: prediction, ground truth and (optional) CT image."""

    case_id: str
    pred: Path
    gt: Path
    image: Path | None = None


@dataclass(frozen=True)
class MetricRow:
    """One case x organ: ``dice``/``nsd`` fractions, ``hd95`` in mm (or voxels), NaN = n/a."""

    case_id: str
    organ_id: int
    organ: str
    dice: float
    hd95: float
    nsd: float
    gt_voxels: int
    pred_voxels: int
    nsd_tolerance_mm: float


@dataclass
class EvaluationResult:
    """Everything an evaluation produced.

    Attributes:
        rows: one :class:`MetricRow` per case x organ (cases sorted, organs in ``organ_ids`` order).
        cases: the evaluated files, sorted by case id.
        organ_ids / organ_names: the evaluated organs (columns of the tables).
        settings: JSON-able settings (inputs, label map, tolerances, absent rule, units).
        overlays: case id -> overlay PNG path relative to ``out_dir``.
        out_dir: where the report was written, or ``None``.
    """

    rows: list[MetricRow]
    cases: list[CasePaths]
    organ_ids: list[int]
    organ_names: list[str]
    settings: dict[str, Any]
    overlays: dict[str, str] = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def table(self) -> AggregateTable:
        """The aggregate table (organs as columns, mean over organs last)."""
        return aggregate(self.rows, self.organ_ids, self.organ_names)
