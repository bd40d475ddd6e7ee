"""Run a function under two gloo ranks on CPU, as ``torchrun --nproc_per_node 2`` would (test helper).

``run_ranks(target, *args)`` spawns ``world`` processes with torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``; one torch thread,
one job each) and returns ``{rank: ("ok", target(*args)) or ("error", message)}``.
``target`` must be a module-level function (it is pickled by name into the children).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, target: Callable[..., Any], args: tuple, results: Any) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RAGSAM_THREADS="1", RAGSAM_JOBS="1")
    import torch.distributed as dist

    try:
        results[rank] = ("ok", target(*args))
    except Exception as exc:  # reported to the test, which asserts on it
        results[rank] = ("error", f"{type(exc).__name__}: {exc}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(target: Callable[..., Any], *args: Any, world: int = 2) -> dict[int, tuple[str, Any]]:
    """``target(*args)`` on ``world`` gloo ranks; every rank's outcome by rank."""
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_rank_main, args=(world, free_port(), target, args, results), nprocs=world)
    return dict(results)
