"""Atomic writes: every output is written to a temporary sibling, then renamed.

A crash or a refused input therefore never leaves a half-written file, and an
existing output is only replaced when ``force`` is true.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragsam.errors import OutputExistsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    """Refuse to overwrite ``path`` unless ``force``; create its parent folder.

    Returns:
        ``path`` as a :class:`Path`.
    Raises:
        OutputExistsError: ``path`` exists and ``force`` is false.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary name keeps the final suffixes (``x.nii.gz`` -> ``.x.tmpXXXX.nii.gz``)
    so writers that choose a format by extension still work. On any exception
    the temporary file is removed and ``path`` is left untouched.

    Example:
        >>> with atomic_path("out/labels.nii.gz", force=True) as tmp:
        ...     sitk.WriteImage(image, str(tmp))
    """
    final = check_writable(path, force)
    suffix = "".join(final.suffixes)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        # Again after writing: some writers (safetensors' save_file) replace the file
        # with a new 0600 one instead of writing into it.
        os.chmod(tmp, mode)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; move it onto ``path`` on success.

    With ``force`` an existing folder is replaced only after the new one is
    complete. On any exception the temporary folder is removed.
    """
    final = check_writable(path, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        _follow_umask(tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _follow_umask(folder: Path) -> None:
    """Give every file and folder under ``folder`` the usual permissions (writers such as
    safetensors' ``save_file`` create 0600 files whatever the umask)."""
    umask = _umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~umask)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: the file system cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def replace_dir(new: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the complete folder ``new`` at ``final``, replacing any folder there, then delete the old one.

    On Linux the two folders are exchanged in one step, so a kill at any moment leaves
    the old folder or the new one at ``final``; elsewhere ``final`` is moved aside first
    (a kill between the two renames leaves it under ``.<name>.old-<pid>``).
    """
    new, final = Path(new), Path(final)
    if not final.exists():
        os.replace(new, final)
        return
    if _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old folder
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(final: str | os.PathLike) -> list[Path]:
    """Delete the temporary siblings that interrupted writers of ``final`` left behind.

    Only call this while holding ``final``'s folder lock (:mod:`ragsam.utils.locking`),
    so no live writer's temporary folder is removed. Returns what was removed.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    stale = [p for p in final.parent.iterdir()
             if p.name.startswith(f".{final.name}.") and (p.name.endswith(".tmp") or ".old-" in p.name)]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def write_text(path: str | os.PathLike, text: str, force: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically. Returns the final path."""
    with atomic_path(path, force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes, force: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically. Returns the final path."""
    with atomic_path(path, force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, force: bool = True) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically. Returns the final path."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", force)
