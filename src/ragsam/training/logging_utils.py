"""Run logging: ``log.csv`` (always), TensorBoard ``events.*`` (if installed), a rich bar.

Only rank 0 creates a :class:`RunLogger`; the others get a :class:`NullLogger`.
``log.csv`` is rewritten atomically at each row so a killed run never leaves a
torn line; on resume, rows after the checkpoint's iteration (logged by the
killed run but about to be redone) are dropped, and TensorBoard purges them.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

from ragsam.utils.atomic import write_text

COLUMNS = ["iteration", "epoch", "lr", "loss", "loss_dice", "loss_ce", "val_dice", "seconds"]


class NullLogger:
    """Logger of non-zero ranks: does nothing."""

    def log(self, row: dict[str, Any]) -> None:
        """Ignore a row."""

    def scalar(self, tag: str, value: float, iteration: int) -> None:
        """Ignore a scalar."""

    def advance(self, iteration: int, text: str = "") -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""


class RunLogger(NullLogger):
    """CSV + optional TensorBoard + optional progress bar for one run folder.

    Args:
        run_dir: the run folder. start: iteration the run (re)starts from.
        total: last iteration. tensorboard, progress: enable those outputs.
    """

    def __init__(self, run_dir: Path, start: int, total: int, tensorboard: bool = True,
                 progress: bool = True) -> None:
        self.path = run_dir / "log.csv"
        self.rows: list[dict[str, Any]] = []
        if start > 0 and self.path.is_file():
            with self.path.open(newline="", encoding="utf-8") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["iteration"]) <= start]
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: CSV only
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(run_dir), purge_step=start + 1 if start > 0 else None)
        self.progress = None
        if progress and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.description}"), transient=True)
            self.task = self.progress.add_task("", total=total, completed=start)
            self.progress.start()

    def log(self, row: dict[str, Any]) -> None:
        """Append a row (keys from :data:`COLUMNS`) and rewrite ``log.csv`` atomically."""
        self.rows.append({k: row.get(k, "") for k in COLUMNS})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        write_text(self.path, buf.getvalue(), force=True)
        if self.writer is not None:
            it = int(row["iteration"])
            for key in ("lr", "loss", "loss_dice", "loss_ce"):
                if row.get(key, "") != "":
                    self.writer.add_scalar(f"train/{key}", float(row[key]), it)

    def scalar(self, tag: str, value: float, iteration: int) -> None:
        """A TensorBoard scalar (e.g. ``val/dice``)."""
        if self.writer is not None:
            self.writer.add_scalar(tag, value, iteration)

    def advance(self, iteration: int, text: str = "") -> None:
        """Move the progress bar to ``iteration``."""
        if self.progress is not None:
            self.progress.update(self.task, completed=iteration, description=text)

    def close(self) -> None:
        """Flush TensorBoard and stop the bar."""
        if self.writer is not None:
            self.writer.close()
        if self.progress is not None:
            self.progress.stop()


def fmt(value: float | None, digits: int = 6) -> str:
    """A float for the CSV (empty for None)."""
    return "" if value is None else f"{value:.{digits}g}"
