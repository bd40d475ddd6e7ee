"""Helpers for building a folder's new version beside the old one (then :func:`replace_dir`).

A command that updates a folder (a prepared cache, a run) writes the complete new
version in a temporary sibling and exchanges the two at the end, so a refusal or a
kill leaves the old version untouched. These helpers carry over what the new version
shares with the old: unchanged files are hard-linked (no copy; our outputs are only
ever replaced by rename, never modified in place, so sharing an inode is safe) and
files that are not ours are copied.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def link_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Recreate the folder ``src`` at ``dst`` with hard links to its files (copies where links fail)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            link_tree(entry, target)
            continue
        try:
            os.link(entry, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copy2(entry, target, follow_symlinks=False)


def copy_entries(src: str | os.PathLike, dst: str | os.PathLike, keep: Callable[[Path], bool]) -> list[Path]:
    """Copy every entry ``p`` of the folder ``src`` with ``keep(p)`` into ``dst``. Returns them."""
    src, dst = Path(src), Path(dst)
    kept = [p for p in sorted(src.iterdir()) if keep(p)] if src.is_dir() else []
    for p in kept:
        if p.is_dir() and not p.is_symlink():
            shutil.copytree(p, dst / p.name, symlinks=True)
        else:
            shutil.copy2(p, dst / p.name, follow_symlinks=False)
    return kept
