"""``RunInfo``: the typed description of a training run folder.

A run folder (see :mod:`ragsam.training.run`) holds the resolved configuration
(``config.yaml``, a :class:`~ragsam.training.config.TrainConfig`) and what
training reports about itself (``val.json``: the best validation and every
validation). Every reader goes through :meth:`RunInfo.read` or
:meth:`RunInfo.read_config`; nothing else parses these files. :meth:`RunFiles.probe` says
which of the run's files exist (started, predicts, finished, resumable).

``val.json`` on disk::

    format_version   RUN_VERSION (a file without one is version 1)
    best             {"iteration": int, "mean_dice": float (-1 before any validation)}
    history          [{"iteration": int, "mean_dice": float, ...per case and organ}, ...]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragsam.config import load_config
from ragsam.errors import InputError
from ragsam.training.config import TrainConfig
from ragsam.utils.atomic import write_json
from ragsam.utils.formats import check_format_version, read_json_object

RUN_VERSION = 1
RUN_VERSIONS = (1,)
CONFIG_FILE = "config.yaml"
VAL_FILE = "val.json"
WEIGHTS_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"
REBUILD = "train the run again with `ragsam train --force`"


@dataclass
class RunInfo:
    """A run folder's configuration and validation record.

    Attributes:
        config: the resolved configuration the run was trained with.
        best_iteration: iteration of the best validation (0 before any).
        best_dice: its mean Dice over cases and organs (-1 before any validation).
        history: every validation, in order (``iteration``, ``mean_dice``, per case and organ).
        format_version: version of ``val.json``.
    """

    config: TrainConfig | None = None
    best_iteration: int = 0
    best_dice: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    format_version: int = RUN_VERSION

    @property
    def validated(self) -> bool:
        """At least one validation was run (``best_dice`` is a real score)."""
        return self.best_dice >= 0

    def to_json(self) -> dict[str, Any]:
        """The content of ``val.json``."""
        return {"format_version": self.format_version,
                "best": {"iteration": self.best_iteration, "mean_dice": self.best_dice},
                "history": self.history}

    @classmethod
    def from_json(cls, d: dict[str, Any], path: str | os.PathLike = VAL_FILE,
                  config: TrainConfig | None = None) -> RunInfo:
        """Parse ``val.json``'s content ``d``; ``path`` is named in messages.

        Raises:
            InputError: an unsupported version or a malformed field.
        """
        version = check_format_version(path, d.get("format_version"), RUN_VERSIONS, REBUILD)
        try:
            best = d.get("best") or {}
            return cls(config=config, best_iteration=int(best.get("iteration", 0)),
                       best_dice=float(best.get("mean_dice", -1.0)), history=list(d.get("history") or []),
                       format_version=version)
        except (AttributeError, TypeError, ValueError) as exc:
            raise InputError(path, f"malformed validation record ({exc}); {REBUILD}") from None

    @staticmethod
    def read_config(run_dir: str | os.PathLike, config_cls: type = TrainConfig) -> Any:
        """The resolved configuration (a :class:`TrainConfig`, or ``config_cls``: the
        ``train-rag`` :class:`~ragsam.training.rag_config.RagTrainConfig`) in ``<run_dir>/config.yaml``.

        Raises:
            InputError: no such folder, not a run folder, or an invalid configuration.
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise InputError(run_dir, "run folder does not exist")
        if not (run_dir / CONFIG_FILE).is_file():
            raise InputError(run_dir, f"not a ragsam run folder (no {CONFIG_FILE})")
        return load_config(config_cls, run_dir / CONFIG_FILE)

    @classmethod
    def read(cls, run_dir: str | os.PathLike, config_cls: type = TrainConfig) -> RunInfo:
        """The run's configuration and, when written, its ``val.json`` (else no validation yet)."""
        config = cls.read_config(run_dir, config_cls)
        path = Path(run_dir) / VAL_FILE
        if not path.is_file():
            return cls(config=config)
        return cls.from_json(read_json_object(path, "missing"), path, config)

    def write_val(self, run_dir: str | os.PathLike) -> Path:
        """Write ``<run_dir>/val.json`` atomically."""
        return write_json(Path(run_dir) / VAL_FILE, self.to_json(), force=True)


@dataclass(frozen=True)
class RunFiles:
    """Which of a run folder's files are there: what a caller may rely on before reading them.

    Attributes:
        config: ``config.yaml`` (the run was started by ragsam).
        weights: ``model.safetensors`` (best or final trainable tensors: the run can predict).
        last: ``last.safetensors`` (training finished).
        checkpoint: ``checkpoints/state.pt`` (an unfinished run can resume).
        validation: ``val.json``.
    """

    config: bool
    weights: bool
    last: bool
    checkpoint: bool
    validation: bool

    @classmethod
    def probe(cls, run_dir: str | os.PathLike) -> RunFiles:
        """Look at ``run_dir`` (a missing folder has none of the files)."""
        from ragsam.training.checkpoint import STATE_FILE

        run_dir = Path(run_dir)
        return cls(config=(run_dir / CONFIG_FILE).is_file(), weights=(run_dir / WEIGHTS_FILE).is_file(),
                   last=(run_dir / LAST_FILE).is_file(), checkpoint=(run_dir / STATE_FILE).is_file(),
                   validation=(run_dir / VAL_FILE).is_file())
