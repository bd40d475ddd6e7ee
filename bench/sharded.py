"""Sharded inference: ``ragsam predict`` over a folder of cases with 1, 2, ... torchrun processes.

Every process count runs the same command (``torchrun --nproc_per_node N -m
ragsam.cli.main predict RUN CASES -o OUT``) on the same cases; the outputs of every
N are compared byte for byte with N = 1 (``identical``). On the CPU each process gets
``cores / N`` threads (``ragsam.utils.threads``); on GPUs each process takes
``cuda:LOCAL_RANK``. The reference mode is N = 1.

    python bench/sharded.py --procs 1,2 --cases 4 --slices 8 --arch tiny --model-size 128
    python bench/sharded.py --device cuda --procs 1,2,4,8 --arch sam_vit_b --cases 16 --slices 50
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
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


def make_cases(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """A run folder and ``--cases`` phantom volumes (seeds 0..) in ``work/cases/case_XXX.nii.gz``."""
    run_dir, first = make_inputs(work, args.arch, args.model_size, args.slices, args.side)
    cases = work / "cases"
    cases.mkdir()
    for i in range(args.cases):
        if i == 0:
            shutil.copy(first, cases / "case_000.nii.gz")
            continue
        extra = work / f"extra{i}"
        extra.mkdir()
        _, image = make_inputs(extra, "tiny", 64, args.slices, args.side, seed=i)  # only its volume is used
        shutil.move(str(image), cases / f"case_{i:03d}.nii.gz")
        shutil.rmtree(extra)
    return run_dir, cases


def run_predict(procs: int, run_dir: Path, cases: Path, out: Path, device: str) -> dict[str, Any]:
    """One ``torchrun`` of ``predict``; wall and CPU seconds, load before."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAGSAM_THREADS", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "-m", "ragsam.cli.main", "predict", str(run_dir), str(cases), "-o", str(out), "--device", device]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{procs} processes failed: {proc.stderr.strip()[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_before": round(load, 2)}


def same_outputs(a: Path, b: Path) -> bool:
    """The label files of two output folders are byte-identical."""
    names = sorted(p.name for p in a.glob("*.nii.gz"))
    return names == sorted(p.name for p in b.glob("*.nii.gz")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--side", type=int, default=128, help="in-plane size of the phantom volumes")
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--model-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": machine(), "uptime_start": os.getloadavg(), "settings": vars(args) | {
        "json": None}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="ragsam-sharded-") as tmp:
        work = Path(tmp)
        run_dir, cases = make_cases(work, args)
        first: Path | None = None
        for n in (int(p) for p in args.procs.split(",")):
            out = work / f"out{n}"
            results["runs"][str(n)] = run_predict(n, run_dir, cases, out, args.device)
            first = first or out
            results["runs"][str(n)]["identical_to_first"] = same_outputs(first, out)
            print(n, results["runs"][str(n)], file=sys.stderr, flush=True)
    base = results["runs"][args.procs.split(",")[0]]["wall_s"]
    results["speedup"] = {n: round(base / r["wall_s"], 2) for n, r in results["runs"].items()}
    results["uptime_end"] = os.getloadavg()
    emit(results, args.json)
    return results


if __name__ == "__main__":
    main()
