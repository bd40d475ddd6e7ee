"""Run a function under two gloo ranks on CPU, as ``torchrun --nproc_per_node 2`` would (test helper).

``run_ranks(target, *args)`` spawns ``world`` processes with torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``; one torch thread,
one job each) and returns ``{rank: ("ok", target(*args)) or ("error", message)}``.
``target`` must be a module-level function (it is pickled by name into the children).
``pg_timeout_s`` sets the gloo process group's timeout (seconds); ``deadline_s`` kills the
ranks and fails the test when they have not all exited by then (a hung collective).
"""

from __future__ import annotations

import datetime
import functools
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, target: Callable[..., Any], args: tuple, results: Any,
               pg_timeout_s: float | None) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RAGSAM_THREADS="1", RAGSAM_JOBS="1")
    import torch.distributed as dist

    if pg_timeout_s is not None:  # every init_process_group of this rank (ragsam's own included)
        dist.init_process_group = functools.partial(dist.init_process_group,
                                                    timeout=datetime.timedelta(seconds=pg_timeout_s))

    try:
        results[rank] = ("ok", target(*args))
    except Exception as exc:  # reported to the test, which asserts on it
        results[rank] = ("error", f"{type(exc).__name__}: {exc}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(target: Callable[..., Any], *args: Any, world: int = 2, pg_timeout_s: float | None = None,
              deadline_s: float | None = None) -> dict[int, tuple[str, Any]]:
    """``target(*args)`` on ``world`` gloo ranks; every rank's outcome by rank.

    Raises:
        AssertionError: a rank was still running after ``deadline_s`` seconds (all are killed).
    """
    results = mp.get_context("spawn").Manager().dict()
    ranks = mp.spawn(_rank_main, args=(world, free_port(), target, args, results, pg_timeout_s), nprocs=world,
                     join=False)
    end = None if deadline_s is None else time.monotonic() + deadline_s
    while not ranks.join(timeout=None if end is None else max(0.0, end - time.monotonic())):
        if end is not None and time.monotonic() >= end:
            for process in ranks.processes:
                process.kill()
            raise AssertionError(f"the ranks had not exited after {deadline_s} s (a rank waits in a collective)")
    return dict(results)
