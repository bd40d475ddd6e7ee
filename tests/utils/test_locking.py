"""One writer per folder: the second is refused with one line; kill -9 releases the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ragsam.utils.locking import FolderLockedError, folder_lock, lock_path


def test_second_writer_refused_and_lock_file_removed(tmp_path):
    folder = tmp_path / "cache"
    with folder_lock(folder) as path:
        assert path == tmp_path / ".cache.lock" and path.read_text() == str(os.getpid())
        with pytest.raises(FolderLockedError) as exc, folder_lock(folder):
            pass
        assert str(exc.value) == (f"{folder}: in use by another ragsam process (pid {os.getpid()}) writing it; "
                                  "wait for it to finish (a folder has one writer at a time)")
    assert not path.exists() and not folder.exists()
    with folder_lock(folder):  # free again
        pass


def test_parents_made_for_the_lock_go_when_left_empty(tmp_path):
    with folder_lock(tmp_path / "a" / "b" / "cache"):
        assert (tmp_path / "a" / "b" / ".cache.lock").is_file()
    assert list(tmp_path.iterdir()) == []
    with folder_lock(tmp_path / "a" / "b" / "cache"):
        (tmp_path / "a" / "b" / "cache").mkdir()  # the command wrote its output: parents stay
    assert (tmp_path / "a" / "b" / "cache").is_dir()


def test_disabled_lock_does_nothing(tmp_path):
    with folder_lock(tmp_path / "x"), folder_lock(tmp_path / "x", enabled=False):
        pass


def test_kill_9_releases_the_lock(tmp_path):
    folder = tmp_path / "run"
    code = (f"from ragsam.utils.locking import folder_lock\nimport time\n"
            f"with folder_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"pid {proc.pid}"), folder_lock(folder):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_path(folder).exists()  # left by the killed holder, and harmless:
    with folder_lock(folder):
        pass
    assert not lock_path(folder).exists()
