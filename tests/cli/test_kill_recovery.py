"""kill -9 at a named point, then the same command again without --force: it recovers, and the
result equals an uninterrupted run (``prepare``, ``index build``, ``predict``, ``train`` before
and after its first checkpoint).

Each killed command runs as a real subprocess of the CLI, stopped at a point named by
``RAGSAM_PAUSE_AT`` (:mod:`ragsam.utils.fault_points`) and sent SIGKILL once it is there;
the rerun goes through ``run_cli`` in this process. Phantom data at 64 px, the tiny models.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ragsam.cli.main import run_cli

TRAIN = ["model.image_size=64", "optim.max_iterations=4", "optim.warmup=1", "optim.batch_size=2",
         "checkpoint_every=2", "log.tensorboard=false", "log.progress=false", "device=cpu"]


def _kill_at(point: str, argv: list[str], tmp_path: Path) -> None:
    """Run ``ragsam argv`` until it reaches ``point``, then SIGKILL it."""
    marker = Path(tempfile.mkdtemp(prefix="ragsam-pause-")) / "paused"
    env = {**os.environ, "RAGSAM_PAUSE_AT": point, "RAGSAM_PAUSE_FILE": str(marker),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ragsam.cli.main", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # generous: start-up on a loaded shared machine
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode} before {point}: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"never reached {point}")
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        shutil.rmtree(marker.parent, ignore_errors=True)
    assert proc.returncode == -signal.SIGKILL


def _files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from ragsam.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("kill")
    write_phantom_dataset(root / "src", n_cases=3, shape=(4, 64, 64), seed=5)
    assert run_cli(["prepare", str(root / "src"), "-o", str(root / "prep"), "--size", "64", "--split", "none"]) == 0
    return {"root": root, "src": root / "src", "prep": root / "prep"}


def test_prepare_killed_mid_update_keeps_the_old_cache_and_the_rerun_finishes(data, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(data["src"], src)
    out = tmp_path / "prep"
    args = ["prepare", str(src), "-o", str(out), "--size", "64", "--split", "none"]
    assert run_cli(args) == 0
    before = _files(out)
    for case in ("0001", "0002"):  # two changed cases: killed after the first is rebuilt
        shutil.copy(data["src"] / "img" / "img0003.nii.gz", src / "img" / f"img{case}.nii.gz")
        shutil.copy(data["src"] / "label" / "label0003.nii.gz", src / "label" / f"label{case}.nii.gz")
    _kill_at("prepare:case-built", args, tmp_path)
    assert _files(out) == before  # the old cache, complete and untouched
    assert run_cli(args) == 0  # no --force
    reference = tmp_path / "reference"
    assert run_cli(["prepare", str(src), "-o", str(reference), "--size", "64", "--split", "none"]) == 0
    assert _files(out, skip=("prepare.json",)) == _files(reference, skip=("prepare.json",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep", "reference", "src"]  # no temporaries


def test_index_build_killed_before_publishing_then_rerun(data, tmp_path):
    args = ["index", "build", str(data["prep"]), "-o", str(tmp_path / "bank"), "--embedder", "tiny",
            "--image-size", "28", "--device", "cpu"]
    _kill_at("index-build:before-publish", args, tmp_path)
    assert not (tmp_path / "bank").exists()
    assert run_cli(args) == 0
    assert run_cli([*args[:4], str(tmp_path / "reference"), *args[5:]]) == 0
    skip = ("bank.json",)  # holds its creation time
    assert _files(tmp_path / "bank", skip) == _files(tmp_path / "reference", skip)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bank")]


@pytest.fixture(scope="module")
def reference_run(data) -> Path:
    run = data["root"] / "run"
    assert run_cli(["train", "--config", "tiny", "--prepared", str(data["prep"]), "--out", str(run), *TRAIN]) == 0
    return run


def _same_run(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "last.safetensors", "checkpoints/state.pt", "config.yaml", "val.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize(("iteration", "checkpointed"), [(1, False), (3, True)])
def test_train_killed_before_and_after_the_first_checkpoint_resumes(data, reference_run, tmp_path, iteration,
                                                                      checkpointed):
    run = tmp_path / "run"
    args = ["train", "--config", "tiny", "--prepared", str(data["prep"]), "--out", str(run), *TRAIN]
    _kill_at(f"train:iteration-{iteration}", args, tmp_path)
    assert (run / "checkpoints" / "state.pt").is_file() == checkpointed
    assert run_cli([*args, "--resume"]) == 0  # no --force
    _same_run(run, reference_run)


def test_predict_killed_mid_folder_continues_where_it_stopped(data, reference_run, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert run_cli(["predict", str(reference_run), str(data["src"]), "-o", str(reference), "--device", "cpu"]) == 0
    out = tmp_path / "out"
    args = ["predict", str(reference_run), str(data["src"]), "-o", str(out), "--device", "cpu", "--no-overlap"]
    _kill_at("predict:case-written", args, tmp_path)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["0001.nii.gz"]
    capsys.readouterr()
    assert run_cli(args) == 0  # no --force
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["0001", "0002", "0003"]
    assert "already done, skipped" in lines[0] and "skipped" not in lines[1] + lines[2]
    assert _files(out) == _files(reference)
    side = json.loads((out / ".0001.nii.gz.ragsam.json").read_text())
    assert side["case_id"] == "0001" and side["output_sha1"]
