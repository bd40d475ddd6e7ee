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


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers warnings or ``Loading weights`` progress bars while the block runs.

    Loading problems are reported by our own strict check (one line); transformers would
    print hundreds of lines about the same missing tensors first.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
