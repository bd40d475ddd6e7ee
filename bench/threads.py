"""Wall and CPU seconds of whole commands, quiet and beside a busy single-threaded process.

Two modes, alternated in the same run so that the machine's other load hits both:

* ``reference``: how ragsam ran before ``ragsam.utils.threads``: torch's threads = the
  CPU count, OpenMP's default wait policy (spin, then sleep);
* ``ragsam``: the thread rule (``RAGSAM_THREADS`` unset: affinity / cgroup quota, one
  thread for tiny models) and ``OMP_WAIT_POLICY=PASSIVE`` (what the CLI sets).

Each command runs in a subprocess (``python -m ragsam.cli.main ...``); its CPU time is
the children's ``getrusage`` delta. ``busy`` starts ``python -c "while True: pass"`` for
the duration of the command. The load average (``os.getloadavg``) before each command
is recorded: on a shared machine the "quiet" runs are only as quiet as the others allow.

Commands: ``predict`` (SAM ViT-B, random weights with LoRA, ``--slices`` slices of a
512 x 512 phantom at model size 512) and ``demo --quick``.

    python bench/threads.py --json bench/results/cpu/threads.json
    python bench/threads.py --commands predict --slices 4 --model-size 128 --arch tiny   # seconds
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine  # noqa: E402
from volume_inference import make_inputs  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def mode_env(mode: str) -> dict[str, str]:
    """The environment of one mode (see the module doc)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAGSAM_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)
    if mode == "reference":
        env["RAGSAM_THREADS"] = str(os.cpu_count() or 1)
        env["OMP_WAIT_POLICY"] = ""  # empty: OpenMP's default, and the CLI keeps an existing value
    return env


def run_command(argv: list[str], mode: str, busy: bool) -> dict[str, Any]:
    """Run ``ragsam <argv>`` once; wall seconds, CPU seconds and the load average before it."""
    load = os.getloadavg()[0]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ragsam.cli.main", *argv], env=mode_env(mode),
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"ragsam {' '.join(argv)} failed ({mode}): {proc.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_before": round(load, 2)}


def command_lines(name: str, work: Path, args: argparse.Namespace) -> list[str]:
    """The argv of one benchmarked command (inputs made once under ``work``)."""
    if name == "predict":
        inputs = work / "inputs"
        if not inputs.exists():
            inputs.mkdir()
            make_inputs(inputs, args.arch, args.model_size, args.slices, 512)
        return ["predict", str(inputs / "run"), str(inputs / "ct.nii.gz"), "-o", str(work / "pred.nii.gz"),
                "--device", "cpu", "--force"]
    if name == "demo":
        return ["demo", "--quick", "--out", str(work / "demo"), "--force"]
    raise ValueError(name)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", default="predict,demo", help="comma-separated: predict, demo")
    parser.add_argument("--arch", default="sam_vit_b")
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--model-size", type=int, default=512)
    parser.add_argument("--loads", default="quiet,busy", help="comma-separated: quiet, busy")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": machine(), "uptime_start": os.getloadavg(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="ragsam-threads-") as tmp:
        for name in args.commands.split(","):
            work = Path(tmp) / name
            work.mkdir()
            line = command_lines(name, work, args)
            for load in args.loads.split(","):
                for mode in ("reference", "ragsam"):
                    key = f"{name}/{load}/{mode}"
                    results["runs"][key] = run_command(line, mode, busy=load == "busy")
                    print(key, results["runs"][key], file=sys.stderr, flush=True)
    runs = results["runs"]
    ratios = {}
    for name in args.commands.split(","):
        for mode in ("reference", "ragsam"):
            q, b = runs.get(f"{name}/quiet/{mode}"), runs.get(f"{name}/busy/{mode}")
            if q and b:
                ratios[f"{name}/{mode}: busy / quiet wall"] = round(b["wall_s"] / q["wall_s"], 2)
    results["ratios"] = ratios
    results["uptime_end"] = os.getloadavg()
    emit(results, args.json)
    return results


if __name__ == "__main__":
    main()
