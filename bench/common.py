"""Shared helpers for the benchmarks: timing, peak memory, machine facts, JSON output.

Every benchmark prints one JSON object to stdout (and writes it with ``--json PATH``),
measuring the optimised path and a reference mode in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``, Linux), e.g. ``AMD EPYC 7B13``; ``None`` elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, GPU, library versions, commit."""
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels ATen dispatches to
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).parent, check=False).stdout.strip() or None
    except OSError:  # pragma: no cover
        info["commit"] = None
    return info


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work (only when timing; never inside the training loop)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: str = "cpu") -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak memory: the CUDA allocator's peak on GPU, the process's max RSS on CPU (MiB)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory(device: str = "cpu") -> None:
    """Reset the CUDA peak counter (CPU max RSS cannot be reset; run modes in subprocesses)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def emit(result: dict[str, Any], json_path: str | None) -> None:
    """Print ``result`` as JSON and write it to ``json_path`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")


def bench_parser(doc: str | None, device_default: str | None = None, device_help: str | None = None,
                 threads_help: str = "torch threads (0 = torch default; 1 on a shared, loaded machine)"):
    """An argument parser with the options every benchmark takes: --quick, --device, --json, --threads."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (smoke test)")
    parser.add_argument("--device", default=device_default or ("cuda" if torch.cuda.is_available() else "cpu"),
                        help=device_help)
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--threads", type=int, default=0, help=threads_help)
    return parser


def apply_torch_threads(threads: int) -> None:
    """Set torch's thread count when ``--threads`` was given (0 keeps torch's default)."""
    if threads:
        torch.set_num_threads(threads)
