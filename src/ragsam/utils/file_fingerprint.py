"""Content fingerprints of a case's input files (no imaging library: paths, sizes, SHA-1).

A case's key is the SHA-1 of a settings key (what besides the files changes the result)
and of every input file's content: the image file or every file of its DICOM folder, and
the label file; for ``.mhd`` / ``.nhdr`` headers also the data file they name. A file whose
path, size and modification time are unchanged keeps its recorded hash (git's stat-cache
idea), so re-runs do not re-read unchanged files. Used by :mod:`ragsam.data.prepare`
(with :func:`ragsam.data.fingerprint.settings_key`) and :mod:`ragsam.utils.case_runner`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha1_file(path: Path) -> str:
    """Hex SHA-1 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha1()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _with_data_file(role: str, path: Path) -> list[tuple[str, Path]]:
    """A file plus, for MetaImage/NRRD detached headers (.mhd/.nhdr), the data file it names.

    The data file gets role ``<role>-data`` so ``image``/``labels`` always name the file
    a reader opens (other modules look the ground truth up by role in ``prepare.json``).
    """
    files = [(role, path)]
    if path.suffix.lower() in (".mhd", ".nhdr"):
        for line in path.read_text(encoding="latin-1", errors="replace").splitlines():
            name, sep, value = line.partition("=" if path.suffix.lower() == ".mhd" else ":")
            if sep and name.strip().lower().replace(" ", "") in ("elementdatafile", "datafile"):
                data = path.parent / value.strip()
                if data.is_file():
                    files.append((f"{role}-data", data))
    return files


def _input_files(ref: Any) -> list[tuple[str, Path]]:
    """``(role, path)`` of every file a case is read from (a DICOM folder: all its files)."""
    files: list[tuple[str, Path]] = []
    image = Path(ref.image)
    if image.is_dir():
        files += [("image", p) for p in sorted(image.iterdir()) if p.is_file()]
    else:
        files += _with_data_file("image", image)
    if ref.labels is not None:
        files += _with_data_file("labels", Path(ref.labels))
    return files


def fingerprint_case(ref: Any, settings_key: str, known: list[dict[str, Any]] | None = None) -> tuple[str, list[dict]]:
    """Content fingerprint of one case's inputs under ``settings_key``.

    Args:
        ref: a ``CaseRef`` (``image``: file or DICOM folder, ``labels``: file or None).
        settings_key: :func:`settings_key` of the run.
        known: file records from the previous run (path, size, mtime_ns, sha1); a file whose
            path, size and mtime are unchanged keeps its recorded sha1 instead of being re-read.
    Returns:
        ``(key, files)``: the case key (hex SHA-1) and the file records to store.
    """
    cache = {(r["path"], r["size"], r["mtime_ns"]): r["sha1"] for r in (known or [])}
    records = []
    for role, path in _input_files(ref):
        st = path.stat()
        entry = {"role": role, "path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        sha1 = cache.get((entry["path"], entry["size"], entry["mtime_ns"])) or sha1_file(path)
        records.append({**entry, "sha1": sha1})
    content = sorted((r["role"], r["sha1"]) for r in records)  # content only: moving the data keeps the key
    key = hashlib.sha1(json.dumps([settings_key, content]).encode()).hexdigest()
    return key, records
