"""``ragsam.utils.jobs.map_cases``: results in input order, and a dead worker explained in one message."""

from __future__ import annotations

import os

import pytest

from ragsam.utils.jobs import map_cases


def square_or_die(x: int) -> int:
    """A task that kills its worker process for x < 0 (as an out-of-memory kill would)."""
    if x < 0:
        os._exit(9)
    return x * x


def test_results_come_back_in_input_order_with_or_without_workers() -> None:
    seen: list[int] = []
    assert map_cases(square_or_die, [3, 1, 2], jobs=2, on_result=seen.append) == [9, 1, 4]
    assert seen == [9, 1, 4]
    assert map_cases(square_or_die, [3, 1, 2], jobs=1) == [9, 1, 4]


def test_a_worker_that_dies_is_reported_with_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"worker process died.*__main__.*jobs=1"):
        map_cases(square_or_die, [1, -1, 2], jobs=2)
