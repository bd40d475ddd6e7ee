"""The demo's Dice across torch thread counts and seeds, with its CPU time and the machine load.

Runs ``ragsam demo`` (the Python API, one fresh process per setting) for every
``--threads`` x ``--seeds`` combination and prints one JSON object: per run the mean and
per-organ Dice of every method, CPU seconds (user + system of the child), wall seconds
and the 1-minute load average before and after; then the spread (max - min) of every
method's mean Dice and of each organ's Dice across the runs.

Example: python bench/demo_repro.py --threads 1 2 --seeds 0 1 --json bench/results/demo_repro.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

CHILD = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from ragsam.demo.run import run_demo
s = run_demo(out_dir=sys.argv[3], force=True, budget=sys.argv[4], seed=int(sys.argv[2]))
print(json.dumps({"methods": {m.method: {"mean": m.mean_dice, "organs": m.organ_dice} for m in s.methods},
                  "stages": s.stages, "weights": s.weights.sam_label}))
"""


def run_one(threads: int, seed: int, budget: str, out: Path) -> dict[str, Any]:
    """One demo in a child process; its Dice, CPU seconds and load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(seed), str(out), budget],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"threads": threads, "seed": seed, "budget": budget, "cpu_seconds": round(cpu, 1),
            "wall_seconds": round(time.perf_counter() - t0, 1), "load_before": round(load0, 2),
            "load_after": round(os.getloadavg()[0], 2), **result}


def spread(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Max - min across runs of every method's mean Dice and of each organ's Dice."""
    out: dict[str, Any] = {}
    for method in runs[0]["methods"]:
        means = [r["methods"][method]["mean"] for r in runs]
        organs = runs[0]["methods"][method]["organs"]
        out[method] = {"mean_min": round(min(means), 4), "mean_max": round(max(means), 4),
                       "organ_spread": {o: round(max(r["methods"][method]["organs"][o] for r in runs)
                                               - min(r["methods"][method]["organs"][o] for r in runs), 4)
                                        for o in organs}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budget", default="standard", choices=("standard", "quick"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="demo-repro-") as tmp:
        for threads in args.threads:
            for seed in args.seeds:
                runs.append(run_one(threads, seed, args.budget, Path(tmp) / f"t{threads}-s{seed}"))
    result = {"machine": machine(), "benchmark": "demo_repro", "runs": runs, "spread": spread(runs)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
