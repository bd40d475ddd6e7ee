"""Run independent per-case work in worker processes (``--jobs N``), results in input order.

CPU stages that handle one case at a time with NumPy/SciPy/SimpleITK (``prepare``,
``evaluate``) gain nearly linearly from processes, where threads would serialise on
the GIL. Workers are started with ``spawn`` (a fresh interpreter: no copy of the
parent's OpenMP or ITK thread pools, which ``fork`` can deadlock) and each is told to
use one thread itself, so N jobs use N cores.

The results are the same as a serial run: each task is a pure function of its
input, and results come back in the order of the inputs. A task's exception
(e.g. :class:`ragsam.errors.InputError`) is raised in the parent as it was raised.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from ragsam.errors import InputError

ENV_VAR = "RAGSAM_JOBS"
T = TypeVar("T")
R = TypeVar("R")


def resolve_jobs(jobs: int | None, tasks: int) -> int:
    """Worker processes for ``tasks`` tasks: ``jobs`` (default: ``RAGSAM_JOBS`` if set, else the
    cores available to this process, :func:`ragsam.utils.threads.available_cores`), never
    more than the tasks, >= 1.

    Raises:
        InputError: ``jobs`` < 1.
    """
    from ragsam.utils.threads import available_cores

    if jobs is None and os.environ.get(ENV_VAR, "").strip():
        text = os.environ[ENV_VAR].strip()
        jobs = int(text) if text.isdigit() else 0
    if jobs is not None and jobs < 1:
        raise InputError(None, f"--jobs (or {ENV_VAR}) must be >= 1, got {jobs}")
    wanted = available_cores() if jobs is None else jobs
    return max(1, min(wanted, tasks))


def _one_thread_worker() -> None:
    """Worker initialiser: one thread per process for the libraries it will import."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
                "RAGSAM_THREADS"):
        os.environ[var] = "1"


def map_cases(fn: Callable[[T], R], items: Iterable[T], jobs: int,
              on_result: Callable[[R], None] | None = None) -> list[R]:
    """``[fn(item) for item in items]``, in ``jobs`` worker processes when ``jobs > 1``.

    ``fn`` must be a module-level function and the items picklable. ``on_result`` is
    called with each result as it arrives, in input order (e.g. a progress line).
    """
    items = list(items)
    results: list[R] = []
    if jobs <= 1 or len(items) <= 1:
        for item in items:
            results.append(fn(item))
            if on_result is not None:
                on_result(results[-1])
        return results
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=context,
                                 initializer=_one_thread_worker) as pool:
            for result in pool.map(fn, items):
                results.append(result)
                if on_result is not None:
                    on_result(result)
    except BrokenProcessPool:
        raise RuntimeError(
            "a worker process died before finishing its case (killed, out of memory, or a script that "
            "starts workers without an `if __name__ == \"__main__\":` guard: spawned workers re-run the "
            "calling script); run with --jobs 1 / jobs=1 to do the work in this process") from None
    return results
