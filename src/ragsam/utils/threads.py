"""How many CPU threads torch may use: the one rule every command follows.

Why this matters: torch's intra-op pool (OpenMP) splits each operation over its
threads and waits for the slowest one. When the machine is shared and one of
those threads is descheduled, every parallel region waits for it, so a command
that starts as many threads as ``os.cpu_count()`` reports can run many times
slower than with fewer threads (measured in ``bench/threads.py``). The rule:

1. ``--threads N`` (the CLI stores it in ``RAGSAM_THREADS``) or ``RAGSAM_THREADS=N``
   wins;
2. otherwise the cores this process may actually use: its CPU affinity
   (``os.sched_getaffinity``, e.g. ``taskset``/Slurm), capped by the cgroup CPU
   quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``, e.g.
   ``docker --cpus``), divided among the processes torchrun starts on this node
   (``LOCAL_WORLD_SIZE``);
3. one thread for a tiny model (below :data:`TINY_MODEL_PARAMS` parameters),
   whose operations are too small to gain from more.

:func:`prefer_passive_wait` additionally asks OpenMP to sleep rather than spin
while waiting (``OMP_WAIT_POLICY=PASSIVE``), so idle pool threads do not steal the
cores the busy ones need; it only works before torch is first imported, which is
why the CLI calls it first thing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ragsam.errors import InputError

ENV_VAR = "RAGSAM_THREADS"
TINY_MODEL_PARAMS = 5_000_000  # the test architectures; SAM ViT-B has ~90 M, DINOv2-S ~22 M
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup_v2(proc_cgroup: Path) -> str:
    """This process's cgroup v2 path (``0::/a/b`` line of /proc/self/cgroup), '' if unknown."""
    for line in (_read(proc_cgroup) or "").splitlines():
        if line.startswith("0::"):
            return line[3:].lstrip("/")
    return ""


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (e.g. ``1.5``), or ``None`` when unlimited/unknown.

    Looks at cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) in this
    process's own cgroup and then at the mount root, then at cgroup v1
    ``cpu/cpu.cfs_quota_us`` (``-1`` = unlimited) over ``cpu.cfs_period_us``.
    """
    own = _own_cgroup_v2(proc_cgroup)
    for folder in ([root / own] if own else []) + [root]:
        text = _read(folder / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota == "max":
                return None
            try:
                return int(quota) / int(period or "100000")
            except ValueError:
                return None
    for v1 in ("cpu", "cpu,cpuacct"):
        quota_text, period_text = _read(root / v1 / "cpu.cfs_quota_us"), _read(root / v1 / "cpu.cfs_period_us")
        if quota_text is None or period_text is None:
            continue
        try:
            quota, period = int(quota_text), int(period_text)
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None
    return None


def affinity_cores() -> int:
    """CPUs this process may be scheduled on (``os.cpu_count()`` where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def available_cores(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """Cores this process can use, at least 1.

    Its affinity, capped by the cgroup quota (rounded up: a 1.5-CPU quota still runs
    two threads in parallel half of the time), shared among the processes torchrun
    starts on this node (``LOCAL_WORLD_SIZE``). The paths are for tests.
    """
    cores = affinity_cores()
    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    try:
        local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_processes = 1
    return max(1, cores // local_processes)


def requested_threads() -> int | None:
    """The user's choice (``--threads`` / ``RAGSAM_THREADS``), or ``None`` for automatic.

    Raises:
        InputError: the variable is set but is not a positive integer.
    """
    text = os.environ.get(ENV_VAR, "").strip()
    if not text or text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(None, f"{ENV_VAR} (or --threads) must be a positive integer or 'auto', got {text!r}")
    return value


def choose_threads(model_params: int | None = None, cores: int | None = None) -> int:
    """Threads for torch's intra-op pool under the module's rule.

    Args:
        model_params: parameter count of the model about to run (``None``: unknown).
        cores: cores available (default :func:`available_cores`).
    Returns:
        The thread count, >= 1.
    """
    requested = requested_threads()
    if requested is not None:
        return requested
    if model_params is not None and model_params < TINY_MODEL_PARAMS:
        return 1
    return available_cores() if cores is None else max(1, cores)


def count_params(*models: object) -> int:
    """Total parameters of the given ``torch.nn.Module`` objects (others count 0)."""
    total = 0
    for model in models:
        params = getattr(model, "parameters", None)
        if callable(params):
            total += sum(p.numel() for p in params())
    return total


def apply_threads(*models: object) -> int:
    """Set ``torch.set_num_threads`` by :func:`choose_threads` for the given models; returns it.

    With no model the size rule is skipped (the cores and the user's choice decide).
    """
    import torch

    n = choose_threads(count_params(*models) if models else None)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def prefer_passive_wait() -> None:
    """Let OpenMP threads sleep instead of spinning between operations (unless the user set it).

    Effective only if called before torch (and its OpenMP runtime) is first imported.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
