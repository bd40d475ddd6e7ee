"""Errors a user can fix.

Everything raised as :class:`RagsamError` (or a subclass) is reported by the
command line as one line, ``ragsam: error: <message>``, with exit code 2 and no
traceback. Any other exception is an internal error (exit code 1).

Messages name the file first and then the problem, e.g.
``/data/ct.nii.gz: not a readable image (truncated gzip stream)``.
"""

from __future__ import annotations

from os import PathLike


class RagsamError(Exception):
    """A problem with the user's input, configuration or environment (exit code 2)."""


class InputError(RagsamError):
    """A bad input file, folder or value.

    Args:
        path: the offending file or folder (or ``None`` when no file is involved).
        problem: what is wrong, in a few words; quote the bad value.
    """

    def __init__(self, path: str | PathLike | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")

    def __reduce__(self) -> tuple:
        """Pickle by the constructor's arguments (errors cross process boundaries in ``--jobs``)."""
        return (type(self), (self.path, self.problem))


class OutputExistsError(RagsamError):
    """An output already exists and ``--force`` was not given."""

    def __init__(self, path: str | PathLike) -> None:
        self.path = str(path)
        super().__init__(f"{path}: already exists (use --force to overwrite)")

    def __reduce__(self) -> tuple:
        """Pickle by the constructor's argument."""
        return (type(self), (self.path,))


class MissingWeightsError(RagsamError):
    """Pretrained weights are not available locally and cannot be downloaded."""


class CasesFailedError(RagsamError):
    """Some cases of a folder failed; the others were written (or skipped as already done).

    Attributes:
        failures: ``(case_id, exception)`` per failed case, in case order.
        results: what the finished cases returned (skipped ones included).
        exit_code: 2 when every failure is a :class:`RagsamError` (user-fixable), else 1.
    """

    def __init__(self, failures: list[tuple[str, BaseException]], results: list, total: int) -> None:
        self.failures = failures
        self.results = results
        self.exit_code = 2 if all(isinstance(e, RagsamError) for _, e in failures) else 1
        super().__init__(f"{len(failures)} of {total} cases failed")

    def lines(self) -> list[str]:
        """One line per failed case, as the command line prints them."""
        out = []
        for case_id, exc in self.failures:
            if isinstance(exc, RagsamError):
                out.append(f"ragsam: error: {exc}")
            else:
                out.append(f"ragsam: internal error: case {case_id}: {type(exc).__name__}: {exc}")
        return out
