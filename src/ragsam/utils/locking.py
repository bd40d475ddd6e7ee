"""One writer per output folder: an exclusive ``fcntl.flock`` on a lock file beside it.

Commands that update a folder in place (``prepare`` on a slice cache, ``index build`` on
a bank, ``train`` on a run folder) hold :func:`folder_lock` for the whole update. A
second writer does not wait: it is refused at once with one line naming the folder and
the process holding it (waiting behind a training run could take hours, and a user who
started the same command twice usually wants to know).

The lock file is ``<parent>/.<name>.lock``, beside the folder rather than inside it, so
that it survives the folder being swapped for a new one (``atomic_dir``) and a refused
command into a new folder leaves no folder behind. The kernel drops the lock when the
process exits or is killed (``kill -9`` included); the holder removes the file (and the
parent folders it had to create, if they stayed empty) on a normal exit, and a file left
by a killed process is simply locked again by the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ragsam.errors import RagsamError


class FolderLockedError(RagsamError):
    """Another process is writing the folder."""

    def __init__(self, path: str | os.PathLike, holder: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: in use by another ragsam process{holder} writing it; "
                         "wait for it to finish (a folder has one writer at a time)")


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: ``<parent>/.<name>.lock``."""
    folder = Path(folder).absolute()
    return folder.with_name(f".{folder.name}.lock")


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, enabled: bool = True, wait: bool = False) -> Iterator[Path]:
    """Hold the exclusive write lock of ``folder`` (which need not exist yet).

    Args:
        folder: the output folder to update.
        enabled: ``False`` makes this a no-op (e.g. non-zero ranks of a multi-process run,
            whose rank 0 holds the lock for all of them).
        wait: block until the holder is done instead of refusing (short edits that queue
            behind each other, such as additions to a support bank).
    Yields:
        The lock file's path.
    Raises:
        FolderLockedError: another process holds the lock.
    """
    path = lock_path(folder)
    if not enabled:
        yield path
        return
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise FolderLockedError(folder, f" (pid {holder})" if holder.isdigit() else "") from None
        try:  # the holder before us may have removed the file after we opened it: lock the live one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it, so nobody locks a file that is going away
        os.close(fd)
        for folder in created:  # parents made for the lock file, left empty by a refused command
            try:
                folder.rmdir()
            except OSError:
                break
