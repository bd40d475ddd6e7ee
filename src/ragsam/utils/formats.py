"""Shared reading rules for ragsam's versioned JSON files (``prepare.json``, ``bank.json``, ``val.json``).

Each on-disk format is one typed class next to the code that writes it
(:class:`~ragsam.data.cache_meta.CacheMeta`, :class:`~ragsam.retrieval.bank_info.BankInfo`,
:class:`~ragsam.training.run_info.RunInfo`, :class:`~ragsam.models.load_report.LoadReport`);
those classes read their files through the two helpers here, so a missing,
corrupt or newer file is refused the same way everywhere: one line naming the
file and saying how to rebuild it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ragsam.errors import InputError


def read_json_object(path: str | os.PathLike, missing: str) -> dict[str, Any]:
    """The JSON object in ``path``.

    Args:
        path: the file.
        missing: the problem to report when the file does not exist (e.g. how to create it).
    Raises:
        InputError: no such file (``missing``), not valid JSON, or not a JSON object.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a JSON object, found {type(obj).__name__}")
    return obj


def check_format(path: str | os.PathLike, d: dict[str, Any], expected: str, what: str) -> None:
    """Refuse a JSON object whose ``format`` is not ``expected`` (``what``: e.g. ``slice cache``)."""
    if d.get("format") != expected:
        raise InputError(path, f"not a ragsam {what} (format {d.get('format')!r})")


def check_format_version(path: str | os.PathLike, found: Any, supported: tuple[int, ...], rebuild: str) -> int:
    """The format version of a file, refusing one this ragsam cannot read.

    Args:
        path: the file (named in the message).
        found: the version recorded in the file; ``None`` (files written before
            versions were recorded) counts as version 1.
        supported: the versions this code reads.
        rebuild: how to rebuild the folder, e.g. ``"rerun `ragsam prepare`"``.
    Returns:
        The version (an int in ``supported``).
    Raises:
        InputError: ``found`` is not a supported version.
    """
    version = 1 if found is None else found
    if isinstance(version, bool) or not isinstance(version, int) or version not in supported:
        newest = max(supported)
        newer = isinstance(version, int) and not isinstance(version, bool) and version > newest
        why = "written by a newer ragsam" if newer else "an unknown format version"
        raise InputError(path, f"format version {version!r} is {why} (this ragsam reads "
                               f"{', '.join(map(str, supported))}); {rebuild}")
    return version
