"""The built wheel works on its own: installed into a fresh virtual environment outside the
repository and run from a folder that is not the repository.

To stay fast the fresh environment reuses the installed dependencies (torch, transformers, ...):
it is a plain ``venv`` whose ``site-packages`` holds the wheel and one ``.pth`` line naming the
test interpreter's ``site-packages``. A ``.pth`` file in a directory added that way is not run,
so the project's own editable install stays invisible; the test checks ``ragsam`` is imported
from the new environment.

The demo runs on a 3-case phantom of 4 x 48 x 48 voxels written by the wheel's ``ragsam phantom``,
with ``--quick --iterations 2``: every stage (prepare, fine-tune, bank, SAM 2 retrieval, hybrid,
evaluation, report) runs from the wheel, but two optimiser steps on 4-slice volumes give
meaningless Dice. It takes about 48 s of CPU (``demo --quick`` itself, 16-slice phantoms and 500
steps, is several times that: too slow for every CI run). ``make demo`` runs the real demo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(venv bin folder, a work folder outside the repository, environment without PYTHONPATH)."""
    root = tmp_path_factory.mktemp("wheel")
    assert REPO not in root.parents
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COLUMNS"] = "200"  # rich tables unwrapped
    # Build from a copy, so the checkout gets no build/ or egg-info folders.
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(REPO / "src", source / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
          "-w", str(dist)], root, env)
    (wheel,) = dist.glob("ragsam-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    bin_dir = venv / "bin"
    new_site = Path(_run([str(bin_dir / "python"), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                         root, env).stdout.strip())
    (new_site / "_ragsam_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--no-deps", "-q",
          str(wheel)], root, env)
    work = root / "elsewhere"
    work.mkdir()
    return bin_dir, work, env


def test_wheel_imports_from_the_new_environment(wheel_env):
    bin_dir, work, env = wheel_env
    out = _run([str(bin_dir / "python"), "-c", "import ragsam; print(ragsam.__file__)"], work, env).stdout
    assert Path(out.strip()).is_relative_to(bin_dir.parent)
    assert _run([str(bin_dir / "ragsam"), "--version"], work, env).stdout.strip() == "ragsam 0.1.0"
    assert _run([str(bin_dir / "python"), "-m", "ragsam", "--version"], work, env).stdout.strip() == "ragsam 0.1.0"


def test_wheel_resolves_every_preset_and_resource(wheel_env):
    bin_dir, work, env = wheel_env
    script = (
        "from ragsam.training.config import preset_names, load_train_config, resolve_preset\n"
        "from ragsam.data.label_maps import load_label_map\n"
        "from ragsam.experiments.tables import paper_tables\n"
        "import ragsam\n"
        "names = preset_names()\n"
        "for n in names:\n"
        "    cfg = load_train_config(n)\n"
        "    assert resolve_preset(n).is_relative_to(__import__('pathlib').Path(ragsam.__file__).parent), n\n"
        "    print(n, cfg.model.arch, cfg.model.peft.method)\n"
        "print(len(load_label_map('btcv').labels), len(load_label_map('flare22').labels), bool(paper_tables()))\n"
    )
    out = _run([str(bin_dir / "python"), "-c", script], work, env).stdout.splitlines()
    assert [line.split()[0] for line in out[:-1]] == ["full", "medsa", "samed", "samed_s", "tiny"]
    assert out[-1] == "14 14 True"  # background + 13 organs in each built-in label map
    for name in ("samed", "tiny"):
        help_text = _run([str(bin_dir / "ragsam"), "train", "--config", name, "--help"], work, env).stdout
        assert "--config" in help_text
    listing = _run([str(bin_dir / "ragsam"), "weights", "list"], work, env).stdout
    assert "sam2.1-tiny" in listing and "facebook/sam-vit-base" in listing


def test_wheel_runs_the_demo_outside_the_repository(wheel_env):
    bin_dir, work, env = wheel_env
    _run([str(bin_dir / "ragsam"), "phantom", "data", "--cases", "3", "--shape", "4,48,48"], work, env)
    proc = _run([str(bin_dir / "ragsam"), "demo", "--data", "data", "--quick", "--iterations", "2", "--out", "demo"],
                work, env)
    assert "Report:" in proc.stdout
    report = (work / "demo" / "report.md").read_text()
    assert "Dice" in report
    assert sorted(p.name for p in (work / "demo" / "predictions").iterdir())  # NIfTI predictions written
