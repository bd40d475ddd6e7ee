"""Atomic writes: nothing half-written, no overwrite without force."""

from __future__ import annotations

import pytest

from ragsam.errors import OutputExistsError
from ragsam.utils.atomic import atomic_dir, atomic_path, write_json, write_text


def test_atomic_path_keeps_suffixes_and_renames(tmp_path):
    target = tmp_path / "sub" / "labels.nii.gz"
    with atomic_path(target, force=False) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.endswith(".nii.gz") and tmp != target
        tmp.write_bytes(b"abc")
        assert not target.exists()
    assert target.read_bytes() == b"abc"
    assert sorted(p.name for p in target.parent.iterdir()) == ["labels.nii.gz"]


def test_atomic_path_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path):
    target = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(OutputExistsError, match="use --force"):
        write_text(target, "new", force=False)
    assert target.read_text() == "old"
    write_text(target, "new", force=True)
    assert target.read_text() == "new"


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    final = tmp_path / "report"
    with atomic_dir(final) as d:
        (d / "x.json").write_text("1")
    assert (final / "x.json").read_text() == "1"
    with pytest.raises(OutputExistsError), atomic_dir(final, force=False):
        pass
    with pytest.raises(ValueError), atomic_dir(final, force=True) as d:
        (d / "y.json").write_text("2")
        raise ValueError("half done")
    assert sorted(p.name for p in final.iterdir()) == ["x.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    with atomic_dir(final, force=True) as d:
        (d / "y.json").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["y.json"]


def test_write_json_round_trip(tmp_path):
    import json

    path = write_json(tmp_path / "m.json", {"dice": 0.5, "organs": [1, 6]})
    assert json.loads(path.read_text()) == {"dice": 0.5, "organs": [1, 6]}


def test_outputs_get_umask_permissions_not_private_temp_ones(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "p.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_atomic_path_mode_follows_umask_even_if_the_writer_replaces_the_file(tmp_path):
    import os
    import stat

    target = tmp_path / "w.bin"
    old = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            tmp.unlink()  # a writer that creates a fresh file (as safetensors' save_file does)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_atomic_dir_contents_follow_umask(tmp_path):
    import os
    import stat

    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "export") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors makes it 0600
            (tmp / "sub").mkdir(mode=0o700)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "export" / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "export" / "sub").stat().st_mode) == 0o755
