"""Start-up cost of every subcommand: from the command to its first work.

A subcommand's first work starts once the CLI has parsed its arguments and its
command function has imported the API it calls (the imports are lazy, inside the
command). For each subcommand a fresh interpreter imports ``ragsam.cli.main`` and
those API modules, exactly what ``ragsam <command>`` does before touching a file;
wall and CPU seconds and the heavy libraries that got imported are recorded.

End to end, ``ragsam evaluate`` on the shared 3 mm case (30 x 101 x 122 voxels, 3 mm,
every label scored against itself shifted by one voxel) runs in two modes:

* ``reference``: ``monai.metrics`` imported first (what ``evaluate`` did before
  ``ragsam.evaluation.surface``);
* ``ragsam``: the command as it is.

CPU seconds are the meaningful figure on a loaded machine (wall includes waiting
for a core); the load average before each run is recorded.

    python bench/startup.py --json bench/results/cpu/startup.json
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

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "tests" / "assets" / "real-ct" / "abdomen-ct-3mm"
HEAVY = ("torch", "transformers", "monai", "SimpleITK", "scipy", "faiss", "matplotlib")

# The API modules each command function imports before its first work (cli/*_cmd.py).
COMMAND_IMPORTS: dict[str, list[str]] = {
    "prepare": ["ragsam.data.prepare", "ragsam.data.slice_dataset", "ragsam.data.slices"],
    "phantom": ["ragsam.data.phantom"],
    "train": ["ragsam.training", "ragsam.training.distributed"],
    "predict": ["ragsam.inference", "ragsam.training.distributed", "ragsam.utils.precision"],
    "evaluate": ["ragsam.evaluation.evaluate", "ragsam.evaluation.report"],
    "index build": ["ragsam.retrieval.bank"],
    "index query": ["ragsam.retrieval.bank", "ragsam.data.slices", "ragsam.data.volume"],
    "segment": ["ragsam.inference.rag_segment", "ragsam.retrieval.segment"],
    "baseline": ["ragsam.baselines.run", "ragsam.data.slices", "ragsam.evaluation.report"],
    "experiment": ["ragsam.experiments.runner"],
    "demo": ["ragsam.demo.run", "ragsam.demo.report"],
    "info": ["ragsam.models", "ragsam.peft.apply", "ragsam.models.export"],
    "weights pull": ["ragsam.hub.fetch"],
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_python(code: str) -> dict[str, Any]:
    """Run ``python -c code``; wall, CPU seconds (children's rusage), load before, stdout."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-800:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_before": round(load, 2),
            "stdout": proc.stdout.strip()}


def command_startup(command: str) -> dict[str, Any]:
    """Import cost of one subcommand up to its first work, and the heavy libraries it loads."""
    imports = "; ".join(f"import {m}" for m in ["ragsam.cli.main", *COMMAND_IMPORTS[command]])
    code = f"import sys; {imports}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = run_python(code)
    out["heavy_imports"] = [m for m in out.pop("stdout").split(",") if m]
    return out


def evaluate_run(mode: str, work: Path) -> dict[str, Any]:
    """``ragsam evaluate`` on the 3 mm case end to end (a shifted copy of the labels as prediction)."""
    pred = work / "pred.nii.gz"
    if not pred.exists():
        import numpy as np
        import SimpleITK as sitk

        image = sitk.ReadImage(str(CASE / "labels.nii.gz"))
        shifted = sitk.GetImageFromArray(np.roll(sitk.GetArrayFromImage(image), 1, axis=1))
        shifted.CopyInformation(image)
        sitk.WriteImage(shifted, str(pred))
    pre = "import monai.metrics; " if mode == "reference" else ""
    code = (f"{pre}from ragsam.cli.main import run_cli; "
            f"raise SystemExit(run_cli(['evaluate', '--pred', {str(pred)!r}, '--gt', "
            f"{str(CASE / 'labels.nii.gz')!r}]))")
    out = run_python(code)
    out.pop("stdout")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", default=",".join(COMMAND_IMPORTS), help="comma-separated subcommands")
    parser.add_argument("--rounds", type=int, default=2, help="evaluate: modes alternate this many times")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": machine(), "uptime_start": os.getloadavg(), "startup": {}, "evaluate": {}}
    for command in args.commands.split(","):
        results["startup"][command] = command_startup(command)
        print(command, results["startup"][command], file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="ragsam-startup-") as tmp:
        for r in range(args.rounds):
            for mode in ("reference", "ragsam"):
                results["evaluate"][f"{mode}/{r}"] = evaluate_run(mode, Path(tmp))
                print(mode, results["evaluate"][f"{mode}/{r}"], file=sys.stderr, flush=True)
    results["uptime_end"] = os.getloadavg()
    emit(results, args.json)
    return results


if __name__ == "__main__":
    main()
