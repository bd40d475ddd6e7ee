"""The private transformers SAM 2 methods ragsam's memory path relies on still exist.

``sam2_memory`` and ``sam2_mask_route`` drive ``Sam2VideoModel`` frame by frame through
five private methods. pyproject.toml pins transformers to the range this was tested with; an
upgrade that removes or renames one of them (or a keyword argument we pass)
fails here, naming the method, instead of deep inside a segmentation.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from transformers import Sam2VideoModel

import ragsam.retrieval.sam2_mask_route as sam2_mask_route
import ragsam.retrieval.sam2_memory as sam2_memory

MODULES = (sam2_memory, sam2_mask_route)

PRIVATE_METHODS = (
    "_encode_new_memory",
    "_select_closest_cond_frames",
    "_process_object_pointers",
    "_use_multimask",
    "_single_frame_forward",
)


def _private_calls() -> dict[str, set[str]]:
    """``{method: keyword names passed}`` of every ``<model>._name(...)`` call in MODULES (not ``self._``)."""
    calls: dict[str, set[str]] = {}
    nodes = [n for m in MODULES for n in ast.walk(ast.parse(Path(m.__file__).read_text(encoding="utf-8")))]
    for node in nodes:
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("_")
                and not node.func.attr.startswith("__")
                and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "self")):
            calls.setdefault(node.func.attr, set()).update(k.arg for k in node.keywords if k.arg)
    return calls


def test_the_list_is_every_private_call_sam2_memory_makes() -> None:
    assert sorted(_private_calls()) == sorted(PRIVATE_METHODS)


@pytest.mark.parametrize("name", PRIVATE_METHODS)
def test_transformers_still_has(name: str) -> None:
    method = getattr(Sam2VideoModel, name, None)
    assert callable(method), f"transformers' Sam2VideoModel no longer has {name} (used by ragsam.retrieval.sam2_memory / sam2_mask_route)"
    accepted = set(inspect.signature(method).parameters)
    passed = _private_calls().get(name, set())
    assert passed <= accepted, (f"Sam2VideoModel.{name} no longer takes {sorted(passed - accepted)} "
                                f"(used by ragsam.retrieval.sam2_memory / sam2_mask_route)")
