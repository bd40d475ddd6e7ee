"""Import boundaries: training and the model side of inference import without SimpleITK, MONAI, faiss,
matplotlib or the DICOM libraries (highdicom, pydicom: imported by ``data.dicom_seg`` / ``data.case_outputs``
inside their functions); the packages form floors (no package imports one above it, at module level or inside a
function)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import ragsam

PACKAGE = Path(ragsam.__file__).parent

#: (importer, imported): the floor rules of docs/architecture.md. Models are built above and handed in.
FORBIDDEN = [
    ("retrieval", "training"), ("retrieval", "inference"),  # RagSegmenter receives SAM 2 and the run's source
    ("models", "hub"),  # weight presets are models.presets; hub (fetch, detect) sits above models
    ("utils", "data"), ("utils", "inference"),  # utils.case_runner and file_fingerprint are below data
    ("data", "models"), ("peft", "training"),
]


def test_training_imports_only_light_dependencies():
    code = ("import sys, ragsam.training, ragsam.training.loop, ragsam.inference, ragsam.data.case_outputs, "
            "ragsam.data.dicom_seg; "
            "heavy = [m for m in ('SimpleITK', 'monai', 'faiss', 'matplotlib', 'highdicom', 'pydicom') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _runtime_imports(path: Path) -> list[tuple[str, int]]:
    """``(ragsam module, line)`` of every import that runs (module level or in a function), not those under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return [(name, line) for name, line in found if name.startswith("ragsam.")]


def _package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> ``file:line`` of each import."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _package_of(path)
        for name, line in _runtime_imports(path):
            dst = name.split(".")[1]
            if dst != src:
                edges[(src, dst)].append(f"{path.relative_to(PACKAGE)}:{line}")
    return edges


def test_the_named_floor_rules_hold():
    edges = _package_edges()
    broken = {f"{a} -> {b}": edges[(a, b)] for a, b in FORBIDDEN if (a, b) in edges}
    assert not broken, broken


def test_packages_import_without_cycles():
    edges = _package_edges()
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo += graph[node]
        return False

    cycles = {f"{a} -> {b}": where for (a, b), where in edges.items() if reaches(b, a)}
    assert not cycles, cycles


def test_the_rules_see_lazy_imports(tmp_path):
    """The scanner counts an import inside a function and skips one under ``if TYPE_CHECKING:``."""
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ragsam.training import x\n"
                      "def f():\n    from ragsam.inference.predict import predict\n", encoding="utf-8")
    assert _runtime_imports(source) == [("ragsam.inference.predict.predict", 5)]
