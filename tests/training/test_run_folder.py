"""The run folder's life: a refused or killed --force keeps the previous run, resume before the
first checkpoint starts again from iteration 0, one writer at a time, byte-identical weights."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from ragsam.errors import InputError, OutputExistsError
from ragsam.training import load_train_config, train
from ragsam.utils.locking import FolderLockedError, folder_lock

BASE = ["model.image_size=32", "optim.max_iterations=3", "optim.warmup=1", "optim.batch_size=2",
        "checkpoint_every=100", "log.every=1", "log.tensorboard=false", "log.progress=false", "device=cpu"]
FILES = ("config.yaml", "model.safetensors", "last.safetensors", "log.csv", "val.json", "checkpoints/state.pt")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings

    root = tmp_path_factory.mktemp("runfolder")
    write_phantom_dataset(root / "src", n_cases=1, shape=(4, 32, 32), seed=2)
    prepare_dataset(root / "src", root / "prep", PrepareOptions(settings=SliceSettings(size=32), split="none"))
    return root / "prep"


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory) -> Path:
    """An uninterrupted run; the others must equal it byte for byte."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield train(_cfg(cache), tmp_path_factory.mktemp("ref") / "run")
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # pins the float sums, so "same result" can mean the same bytes
    yield
    torch.set_num_threads(threads)


def _cfg(cache: Path, *extra: str):
    return load_train_config("tiny", [f"data.prepared={cache}", *BASE, *extra])


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every run file's bytes (log.csv without its wall-clock column)."""
    files = {name: (run / name).read_bytes() for name in FILES}
    files["log.csv"] = b"\n".join(line.rsplit(b",", 1)[0] for line in files["log.csv"].splitlines())
    return files


def test_refused_force_keeps_the_previous_run(cache, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = _snapshot(run)
    broken = tmp_path / "broken"
    shutil.copytree(cache, broken)
    next(broken.glob("cases/*/image.npy")).unlink()
    with pytest.raises(InputError):
        train(_cfg(broken), run, force=True)
    assert _snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "run"]  # no temporary left


def test_killed_force_keeps_the_previous_run_until_the_new_one_finishes(cache, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "notes.txt").write_text("mine")
    before = _snapshot(run)
    train(_cfg(cache, "optim.lr=0.01"), run, force=True, stop_after=1)  # simulated kill
    assert _snapshot(run) == before
    train(_cfg(cache, "optim.lr=0.01"), run, force=True)  # the rerun clears the dead attempt
    assert (run / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_resume_before_the_first_checkpoint_starts_from_iteration_0(cache, reference, tmp_path):
    run = train(_cfg(cache), tmp_path / "run", stop_after=2)
    assert not (run / "checkpoints" / "state.pt").exists() and (run / "config.yaml").is_file()
    train(None, run, resume=True)
    assert _snapshot(run) == _snapshot(reference)
    # a plain rerun of a never-checkpointed run does the same
    again = train(_cfg(cache), tmp_path / "again", stop_after=1)
    train(_cfg(cache), again)
    assert _snapshot(again) == _snapshot(reference)
    # stopped during start-up (no config.yaml yet): --resume with the command line's config
    start = train(_cfg(cache), tmp_path / "start", resume=True)
    assert _snapshot(start) == _snapshot(reference)


def test_unfinished_run_with_checkpoint_needs_resume(cache, tmp_path):
    run = train(_cfg(cache, "checkpoint_every=1"), tmp_path / "run", stop_after=1)
    with pytest.raises(InputError, match="unfinished run with a checkpoint; continue it with --resume"):
        train(_cfg(cache, "checkpoint_every=1"), run)
    train(_cfg(cache, "checkpoint_every=1"), run, resume=True)
    with pytest.raises(OutputExistsError):
        train(_cfg(cache, "checkpoint_every=1"), run)


def test_second_writer_is_refused(cache, tmp_path):
    run = tmp_path / "run"
    with folder_lock(run), pytest.raises(FolderLockedError, match=f"pid {os.getpid()}"):
        train(_cfg(cache), run)
    assert not run.exists()


def test_identical_runs_write_identical_bytes_with_umask_permissions(cache, reference, tmp_path):
    old = os.umask(0o027)
    try:
        run = train(_cfg(cache), tmp_path / "run")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "last.safetensors"):
        assert (run / name).read_bytes() == (reference / name).read_bytes()
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o640
