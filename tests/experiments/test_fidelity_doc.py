"""docs/paper-fidelity.md against the code: plan tables vs BUILTIN_PLANS, stated defaults vs the presets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ragsam.config import to_dict
from ragsam.experiments.plans import BUILTIN_PLANS, Variant
from ragsam.experiments.runner import ExperimentSettings
from ragsam.training.config import load_train_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "paper-fidelity.md"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables_after(text: str, heading: str) -> list[list[str]]:
    """Rows (cells) of the first Markdown table after ``heading``, header and rule dropped."""
    lines = text.splitlines()
    start = lines.index(heading)
    rows, seen = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen = True
            rows.append(_cells(line))
        elif seen or line.startswith("#"):
            break
    return rows[2:]


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _doc_variant(cells: list[str]) -> tuple:
    name, kind, setup, overrides, paper_row = cells
    row = None if paper_row in ("-", "") else paper_row
    if kind == "finetune":
        return name, kind, _code(setup)[0], _code(overrides), row
    if kind == "rag":
        return name, kind, setup.removeprefix("base:").strip(), _code(overrides), row
    if kind == "retrieval":  # `train-rag` preset, or "training-free"
        return name, kind, (_code(setup) or [None])[0], _code(overrides), row
    weights, prompt = _code(setup)
    return name, kind, (weights, prompt), _code(overrides), row


def _plan_variant(v: Variant) -> tuple:
    setup = {"finetune": v.preset, "rag": v.base, "baseline": (v.weights, v.prompt), "retrieval": v.preset}[v.kind]
    return v.name, v.kind, setup, list(v.overrides), v.paper_row


@pytest.mark.parametrize("name", sorted(BUILTIN_PLANS))
def test_each_plans_variants_are_the_rows_listed_in_the_doc(name):
    text = DOC.read_text(encoding="utf-8")
    documented = [_doc_variant(cells) for cells in _tables_after(text, f"### `{name}`")]
    assert documented == [_plan_variant(v) for v in BUILTIN_PLANS[name].variants]


def _flat(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def test_defaults_stated_in_the_doc_are_the_samed_presets():
    text = DOC.read_text(encoding="utf-8")
    rows = _tables_after(text, "## Hyper-parameters and protocol")
    assert len(rows) >= 30  # one row per choice
    resolved = _flat(to_dict(load_train_config("samed")))
    stated = {}
    for cells in rows:
        for span in _code(cells[3]):  # the "ragsam default" column
            match = re.fullmatch(r"((?:model|optim|augment|data)(?:\.\w+)+): (.+)", span)
            if match:
                stated[match.group(1)] = yaml.safe_load(match.group(2))
    assert len(stated) >= 15
    assert {k: resolved[k] for k in stated} == stated


def test_experiment_defaults_stated_in_the_doc_are_the_runners():
    text = DOC.read_text(encoding="utf-8")
    settings = ExperimentSettings(data="")
    flags = {"--k": "k", "--z-prior": "z_prior", "--embedder": "embedder", "--sam2": "sam2_weights"}
    found = re.findall(r"`experiment (--[\w-]+) ([^`]+)`", text)
    assert {flag for flag, _ in found} == set(flags)
    for flag, value in found:
        assert yaml.safe_load(value) == getattr(settings, flags[flag]), flag
