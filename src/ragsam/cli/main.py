"""Entry point of the ``ragsam`` console script.

Exit codes: 0 success, 2 bad input or usage (one line, no traceback),
1 internal error (one line; set ``RAGSAM_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path

import click
import typer

try:  # typer >= 0.17 ships its own copy of click
    from typer._click.exceptions import UsageError as _TyperUsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    _TyperUsageError = click.exceptions.UsageError

# Importing the modules registers their commands on the app.
from ragsam.cli import (  # noqa: F401
    app_cmd,
    baseline_cmd,
    demo_cmd,
    evaluate_cmd,
    experiment_cmd,
    index_cmd,
    model_cmd,
    pacs_cmd,
    predict_cmd,
    prepare_cmd,
    pretrain_cmd,
    segment_cmd,
    train_cmd,
    train_rag_cmd,
    weights_cmd,
)
from ragsam.cli.root import app
from ragsam.errors import CasesFailedError, RagsamError
from ragsam.utils.threads import prefer_passive_wait

#: OS errors about a path the user chose: reported as bad input (exit 2), naming the path.
_USER_OS_ERRORS = {errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                   errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOENT, errno.EDQUOT}
_EXIT = (click.exceptions.Exit, typer.Exit)
_USAGE = (click.exceptions.UsageError, _TyperUsageError)
_ABORT = (click.exceptions.Abort, typer.Abort)


def run_cli(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` and return the exit code (never raises)."""
    prefer_passive_wait()  # before any command imports torch
    try:
        app(args=argv, prog_name="ragsam", standalone_mode=False)
        return 0
    except _EXIT as exc:
        return int(exc.exit_code or 0)
    except _USAGE as exc:
        exc.show()
        return 2
    except _ABORT:
        print("ragsam: aborted", file=sys.stderr)
        return 130
    except CasesFailedError as exc:  # a folder of cases: one line per failed case
        for line in exc.lines():
            print(line, file=sys.stderr)
        return exc.exit_code
    except RagsamError as exc:
        print(f"ragsam: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _USER_OS_ERRORS or exc.filename is None:
            return _internal(exc)
        # A path the user gave cannot be used (under a regular file, not writable, disk full, ...).
        print(f"ragsam: error: {_describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ragsam: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # internal error: one line unless debugging
        return _internal(exc)


def _describe_os_error(exc: OSError) -> str:
    """``<path>: <problem>``; a path under a regular file names that file."""
    path = Path(exc.filename)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        for candidate in (path, *path.parents):
            if candidate.is_file():
                return f"{candidate}: is a file, so it cannot hold the output {path}" if candidate != path else \
                    f"{path}: is a file, not a folder"
    return f"{path}: {exc.strerror or exc}"


def _internal(exc: BaseException) -> int:
    if os.environ.get("RAGSAM_DEBUG"):
        traceback.print_exception(exc)
    print(f"ragsam: internal error: {type(exc).__name__}: {exc} (set RAGSAM_DEBUG=1 for the traceback)",
          file=sys.stderr)
    return 1


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
