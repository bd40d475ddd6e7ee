"""Keep what native libraries (ITK, MetaIO, GDCM) print off the user's terminal.

ITK and MetaIO write warnings and parse errors straight to the process's file
descriptors 1 and 2 (C++ ``std::cout``/``std::cerr``), past Python's ``sys.stderr``,
so ``SetGlobalWarningDisplay(False)`` alone does not silence them. We turn every
problem they report into one :class:`ragsam.errors.InputError` line of our own, so
their text is captured here and dropped (or quoted by the caller).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def captured_native_output() -> Iterator[list[str]]:
    """Redirect file descriptors 1 and 2 to a scratch file while the block runs.

    Yields:
        A list that holds, after the block, the captured text (one string; may be empty).
    """
    captured: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    with tempfile.TemporaryFile(mode="w+b") as scratch:
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                except OSError:  # no such descriptor (a daemon): nothing to protect
                    continue
                os.dup2(scratch.fileno(), fd)
            yield captured
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            scratch.seek(0)
            captured.append(scratch.read().decode("utf-8", "replace"))
