"""How much work the demo does: :class:`DemoBudget` and its named presets :data:`BUDGETS`."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ragsam.errors import InputError


@dataclass(frozen=True)
class DemoBudget:
    """How much work the demo does (named presets in :data:`BUDGETS`).

    Attributes:
        cases: phantom cases written (ignored with ``data``); the BTCV paper split of
            ``prepare`` keeps one test case in five (6 cases -> 5 train / 1 test).
        shape: phantom ``(z, y, x)`` voxels. spacing_mm: phantom ``(z, y, x)`` spacing (mm).
        size: slice side S in pixels fed to the fine-tuned model (multiple of 16).
        iterations: fine-tuning optimiser steps. batch_size: slices per step. lr: peak learning rate.
        k: retrieved support slices per query slice.
        max_test_cases: at most this many test cases are predicted and evaluated.
        rag_iterations, rag_batch_size, rag_lr: episodic fine-tuning of SAM 2 (``ragsam train-rag``,
            LoRA rank 4 + full decoder): optimiser steps, episodes per step, peak learning rate.
    """

    cases: int = 6
    shape: tuple[int, int, int] = (24, 96, 96)
    spacing_mm: tuple[float, float, float] = (6.0, 4.0, 4.0)
    size: int = 64
    iterations: int = 300
    batch_size: int = 8
    lr: float = 0.005
    k: int = 2
    max_test_cases: int = 1
    rag_iterations: int = 60
    rag_batch_size: int = 2
    rag_lr: float = 0.002


BUDGETS: dict[str, DemoBudget] = {
    # 6 phantoms (5 train / 1 test); LoRA rank 4 on the pre-trained tiny SAM: 300 steps of 8 slices
    # take ~19 s of CPU (1 thread). Retrieval costs ~0.2 s of CPU per slice with k = 2.
    "standard": DemoBudget(),
    # smaller phantoms, one small test case, k = 1: the CI smoke run
    "quick": DemoBudget(cases=4, shape=(16, 64, 64), spacing_mm=(8.0, 6.0, 6.0), size=64, iterations=150,
                        k=1, max_test_cases=1),
}


def resolve_budget(budget: DemoBudget | str, iterations: int | None = None) -> DemoBudget:
    """The budget named ``budget`` (or given), its fine-tuning ``iterations`` replaced when given, checked.

    Raises:
        InputError: an unknown name, ``iterations < 1``, a slice size not a multiple of 16 or under 32.
    """
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise InputError(None, f"unknown demo budget {budget!r} (choose {', '.join(BUDGETS)})")
        budget = BUDGETS[budget]
    if iterations is not None:
        if iterations < 1:
            raise InputError(None, f"iterations must be >= 1, got {iterations}")
        budget = replace(budget, iterations=int(iterations))
    if budget.size % 16 or budget.size < 32:
        raise InputError(None, f"slice size must be a multiple of 16 and >= 32, got {budget.size}")
    return budget
