"""Where a training run writes, when it starts over, and when it replaces a previous run.

Rules (``train(cfg, out, resume=..., force=...)``):

* **New run** (``out`` absent or empty): written in place; ``config.yaml`` (the resolved
  configuration) is the first file, written atomically once the cache has been read.
* **--resume**: continues from ``checkpoints/state.pt``. With no checkpoint yet (killed
  before the first one) the run starts again from iteration 0 (same seed, so the same
  result) after clearing what the killed attempt logged. With no ``config.yaml`` either
  (killed during start-up) the configuration given on the command line is used; without
  one the run cannot be rebuilt and is refused.
* **Plain rerun** of an unfinished run that has no checkpoint yet: the same as --resume
  (nothing is lost). An unfinished run with a checkpoint is refused with a hint to use
  --resume; a finished one is refused ("already exists") unless --force.
* **--force** over an existing run: the new run is written in a sibling folder
  ``.<name>.force.tmp`` and exchanged with ``out`` only when it has finished
  (:func:`ragsam.utils.atomic.replace_dir`); files in ``out`` that are not run files are
  copied over first. A refused or killed forced run leaves the previous run untouched
  (the sibling is removed by the next run into ``out``).

The caller holds ``out``'s folder lock (:mod:`ragsam.utils.locking`) throughout.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ragsam.errors import InputError, OutputExistsError
from ragsam.training.run_info import CONFIG_FILE, VAL_FILE, RunFiles
from ragsam.utils.atomic import remove_stale_temporaries, replace_dir
from ragsam.utils.folders import copy_entries

RUN_FILES = (CONFIG_FILE, "model.safetensors", "last.safetensors", "log.csv", VAL_FILE)
RUN_DIRS = ("checkpoints", "debug")


@dataclass(frozen=True)
class RunFolder:
    """Where this process writes.

    Attributes:
        final: the run folder the user named.
        work: where the run is written: ``final``, or (``--force`` over a run) a sibling.
        resume: continue from ``work/checkpoints/state.pt``.
        saved_config: ``work/config.yaml`` exists and is the run's configuration.
    """

    final: Path
    work: Path
    resume: bool
    saved_config: bool

    @property
    def replaces(self) -> bool:
        """The run replaces ``final`` when it finishes."""
        return self.work != self.final


def _is_run_entry(p: Path) -> bool:
    return p.name in RUN_FILES or p.name in RUN_DIRS or p.name.startswith("events.out.tfevents.")


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def clear_run_files(folder: Path, keep_config: bool = False) -> None:
    """Remove the run files (``RUN_FILES``, ``RUN_DIRS``, TensorBoard events) from ``folder``, nothing else."""
    for p in _entries(folder):
        if not _is_run_entry(p) or (keep_config and p.name == "config.yaml"):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def plan_folder(run_dir: Path, resume: bool, force: bool, have_config: bool, cleanup: bool = True) -> RunFolder:
    """Decide where and how the run writes (see the module docstring).

    Args:
        run_dir: the run folder named by the user.
        resume / force: the command's flags (not both).
        have_config: a configuration was given on the command line.
        cleanup: remove temporaries left by a killed forced run (the lock holder only).
    Raises:
        InputError / OutputExistsError: the folder cannot be used as asked.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(run_dir, "exists and is not a folder")
    if cleanup:
        remove_stale_temporaries(run_dir)  # a forced run killed before it finished
    entries = _entries(run_dir)
    files = RunFiles.probe(run_dir)
    saved = files.config
    only_run_files = all(_is_run_entry(p) for p in entries)
    if force:
        if not entries:
            return RunFolder(run_dir, run_dir, False, False)
        return RunFolder(run_dir, run_dir.with_name(f".{run_dir.name}.force.tmp"), False, False)
    finished, checkpoint = files.last, files.checkpoint
    if not resume and entries:
        if not saved or finished:
            raise OutputExistsError(run_dir)
        if checkpoint:
            raise InputError(run_dir, "holds an unfinished run with a checkpoint; continue it with --resume "
                                      "or start afresh with --force")
        resume = True  # unfinished and never checkpointed: starting again loses nothing
    if not resume:
        return RunFolder(run_dir, run_dir, False, False)
    if not saved:
        if not only_run_files:
            raise InputError(run_dir, "not a ragsam run folder (no config.yaml) - cannot --resume")
        if not have_config:
            raise InputError(run_dir, "no config.yaml (the run was stopped during start-up): give its --config "
                                      "to start it from iteration 0")
    return RunFolder(run_dir, run_dir, checkpoint and saved, saved)


def publish(folder: RunFolder) -> None:
    """Put a finished forced run in place of the previous one (main process only).

    Entries of the previous folder that are not run files (a user's notes) are copied into
    the new run first, so the exchange keeps them.
    """
    if not folder.replaces:
        return
    copy_entries(folder.final, folder.work, lambda p: not _is_run_entry(p))
    replace_dir(folder.work, folder.final)
