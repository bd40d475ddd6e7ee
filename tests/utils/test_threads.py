"""The thread rule: affinity, cgroup quota (v1 and v2, faked), torchrun's share, model size, overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ragsam.cli.main import run_cli
from ragsam.errors import InputError
from ragsam.utils import threads


def _cgroup_v2(root: Path, text: str, own: str = "") -> Path:
    folder = root / own if own else root
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(text + "\n")
    proc = root.parent / "proc_cgroup"
    proc.write_text(f"0::/{own}\n")
    return proc


def test_cgroup_v2_quota_unlimited_and_own_group(tmp_path):
    root = tmp_path / "cg"
    proc = _cgroup_v2(root, "150000 100000")
    assert threads.cgroup_cpu_limit(root, proc) == 1.5
    (root / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(root, proc) is None
    # the process's own group (from /proc/self/cgroup) is read before the mount root
    proc = _cgroup_v2(root, "300000 100000", own="user.slice/job")
    assert threads.cgroup_cpu_limit(root, proc) == 3.0


def test_cgroup_v1_quota(tmp_path):
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("200000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    missing = tmp_path / "no_proc"
    assert threads.cgroup_cpu_limit(tmp_path, missing) == 2.0
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path, missing) is None
    assert threads.cgroup_cpu_limit(tmp_path / "nothing", missing) is None


def test_available_cores_affinity_quota_and_torchrun_share(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    root = tmp_path / "cg"
    proc = _cgroup_v2(root, "max 100000")
    assert threads.available_cores(root, proc) == 8
    (root / "cpu.max").write_text("250000 100000\n")  # 2.5 CPUs -> 3 threads
    assert threads.available_cores(root, proc) == 3
    (root / "cpu.max").write_text("20000 100000\n")  # a fifth of a CPU still gets one thread
    assert threads.available_cores(root, proc) == 1
    (root / "cpu.max").write_text("max 100000\n")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # torchrun: 3 processes share the 8 cores
    assert threads.available_cores(root, proc) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert threads.available_cores(root, proc) == 1


def test_choose_threads_model_size_and_overrides(monkeypatch):
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    assert threads.choose_threads(None, cores=6) == 6
    assert threads.choose_threads(threads.TINY_MODEL_PARAMS - 1, cores=6) == 1
    assert threads.choose_threads(threads.TINY_MODEL_PARAMS, cores=6) == 6
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert threads.choose_threads(10, cores=6) == 3  # the user's choice beats the size rule
    monkeypatch.setenv(threads.ENV_VAR, "auto")
    assert threads.choose_threads(None, cores=6) == 6
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv(threads.ENV_VAR, bad)
        with pytest.raises(InputError, match="RAGSAM_THREADS"):
            threads.choose_threads(None, cores=6)


def test_apply_threads_counts_parameters(monkeypatch):
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    tiny = torch.nn.Linear(10, 10)  # 110 parameters
    assert threads.count_params(tiny, None, torch.nn.Linear(2, 3)) == 110 + 9
    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(tiny) == 1 and torch.get_num_threads() == 1
        assert threads.apply_threads() == 2 and torch.get_num_threads() == 2  # no model: the cores
    finally:
        torch.set_num_threads(before)


def test_cli_threads_option_sets_the_variable(monkeypatch, capsys):
    monkeypatch.setenv(threads.ENV_VAR, "1")  # restored after the test
    assert run_cli(["--threads", "3", "index", "--help"]) == 0
    assert os.environ[threads.ENV_VAR] == "3"
    monkeypatch.setenv(threads.ENV_VAR, "zero")
    with pytest.raises(InputError):
        threads.requested_threads()


def test_prefer_passive_wait_keeps_a_user_setting(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    threads.prefer_passive_wait()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.prefer_passive_wait()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
