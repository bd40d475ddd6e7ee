"""Named points where a test can stop a command to kill it (``kill -9`` recovery tests).

``pause_at("prepare:case-built")`` does nothing unless the environment variable
``RAGSAM_PAUSE_AT`` names that point; then it creates the file ``RAGSAM_PAUSE_FILE``
(so the test knows the process got there) and sleeps until it is killed. The tests in
``tests/cli/test_kill_recovery.py`` start a command with these variables, wait for the
file, send SIGKILL and check that a rerun recovers without ``--force``.

Points: ``prepare:case-built`` (a case of the new cache version is written, the swap has
not happened), ``index-build:before-publish`` (the new bank is complete in its temporary
folder), ``predict:case-written`` (a case's output and fingerprint are written),
``train:iteration-<n>`` (iteration ``n`` and its checkpoint, if one falls there, are done).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AT = "RAGSAM_PAUSE_AT"
PAUSE_FILE = "RAGSAM_PAUSE_FILE"


def pause_at(point: str) -> None:
    """Stop here for good when ``RAGSAM_PAUSE_AT == point`` (testing only; see the module docstring)."""
    if os.environ.get(PAUSE_AT) != point:
        return
    marker = os.environ.get(PAUSE_FILE)
    if marker:
        Path(marker).write_text(str(os.getpid()), encoding="utf-8")
    while True:
        time.sleep(60)
