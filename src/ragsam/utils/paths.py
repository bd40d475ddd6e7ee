"""Path rules: nothing read from a dataset description may escape its root; where per-case outputs go."""

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


LABEL_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def case_output_paths(case_ids: list[str], output: str | os.PathLike) -> list[Path]:
    """Where each case's label file goes: ``output`` itself for one case named like a label
    file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``), else ``output/<case_id>.nii.gz``.

    Raises:
        InputError: several cases (or a folder-like name) but ``output`` is an existing file.
    """
    output = Path(output)
    if len(case_ids) == 1 and output.name.lower().endswith(LABEL_FILE_SUFFIXES):
        return [output]
    if output.exists() and not output.is_dir():
        raise InputError(output, "exists and is not a folder (several cases need an output folder)")
    return [output / f"{cid}.nii.gz" for cid in case_ids]
