"""What a demo run did: one :class:`MethodScore` per method and the :class:`DemoSummary` (``summary.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragsam.demo.budget import DemoBudget
from ragsam.hub.detect import WeightsUsed


@dataclass
class MethodScore:
    """Dice of one method on the test cases.

    Attributes:
        method: ``finetuned``, ``rag``, ``hybrid`` or ``rag-trained``.
        mean_dice: mean over organs of the per-organ mean over cases (fraction, NaN = no organ scored).
        organ_dice: organ name -> mean Dice over the test cases.
        predictions / evaluation: folders relative to the demo folder.
        overlays: case id -> overlay PNG relative to the demo folder.
        seconds: wall time of the method's segmentation of the test cases.
    """

    method: str
    mean_dice: float
    organ_dice: dict[str, float]
    predictions: str
    evaluation: str
    overlays: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class DemoSummary:
    """What :func:`run_demo` did (JSON-serialisable through :meth:`to_json`).

    Attributes:
        out_dir: the demo folder. report: its ``report.md``.
        source: ``"phantom"`` or the dataset path given.
        train_cases / test_cases: case ids used for fine-tuning + the bank / for evaluation.
        weights: which weights every stage used.
        methods: one Dice summary per evaluated method (``finetuned``, ``rag``, ``hybrid``, ``rag-trained``).
        stages: stage name -> wall seconds. seconds: total wall seconds.
        notes: stages left out and why.
        budget: the :class:`DemoBudget` used.
    """

    out_dir: Path
    report: Path
    source: str
    train_cases: list[str]
    test_cases: list[str]
    weights: WeightsUsed
    methods: list[MethodScore]
    stages: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    budget: DemoBudget = field(default_factory=DemoBudget)

    def method(self, name: str) -> MethodScore:
        """The score of method ``name``. Raises KeyError when it was not run."""
        for m in self.methods:
            if m.method == name:
                return m
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"], d["report"] = str(self.out_dir), str(self.report)
        return d
