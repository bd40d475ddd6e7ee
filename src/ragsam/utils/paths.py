"""Path safety: nothing read from a dataset description may escape its root."""

from __future__ import annotations

import os
from pathlib import Path

from ragsam.errors import InputError


def resolve_inside(root: str | os.PathLike, relative: str | os.PathLike, source: str | os.PathLike) -> Path:
    """Resolve ``relative`` against ``root`` and refuse it if it leaves ``root``.

    Args:
        root: the dataset folder.
        relative: a path taken from a file such as ``dataset.json``.
        source: the file that named ``relative`` (used in the error message).
    Returns:
        The resolved absolute path (symbolic links followed).
    Raises:
        InputError: the path is absolute or resolves outside ``root``.
    """
    root_resolved = Path(root).resolve()
    rel = Path(relative)
    if rel.is_absolute():
        raise InputError(source, f"path {str(relative)!r} is absolute; paths must stay inside {root_resolved}")
    candidate = (root_resolved / rel).resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise InputError(source, f"path {str(relative)!r} escapes the dataset root {root_resolved}")
    return candidate
