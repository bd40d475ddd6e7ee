"""``RagTrainConfig``: episodic fine-tuning of SAM 2 for retrieval (``ragsam train-rag``).

Sections ``val`` and ``log`` are the same classes as ``ragsam train``'s
(:mod:`ragsam.training.config`), and ``optim`` is its :class:`OptimConfig` plus the
object-score loss weight (:class:`RagOptimConfig`), so the loop, schedule, checkpoints and
early stopping behave identically. Load with :func:`load_rag_config` (defaults <- YAML
file or preset ``configs/rag_*.yaml`` <- ``key=value`` overrides); the resolved
configuration is saved as ``<run>/config.yaml`` and read back by
:func:`ragsam.training.rag_model.load_sam2_run`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ragsam.config import load_config
from ragsam.errors import InputError
from ragsam.peft.config import (
    SAM2_DECODER_MODES,
    SAM2_LORA_TARGETS,
    SAM2_PEFT_METHODS,
    Sam2PeftConfig,
    check_ranks,
)
from ragsam.training.config import LogConfig, OptimConfig, ValConfig, resolve_preset


@dataclass
class RagModelConfig:
    """The SAM 2 that is fine-tuned and how it reads its supports.

    Attributes:
        weights: SAM 2 weights (see :func:`ragsam.models.sam2.build_sam2`).
        num_classes: K organs (label ids 1..K); ``None``: the largest id of the cache's label map.
        pointer_positions, use_empty_supports: as :class:`~ragsam.retrieval.sam2_memory.Sam2MemorySegmenter`.
        peft: what trains.
    """

    weights: str = "facebook/sam2.1-hiera-tiny"
    num_classes: int | None = None
    pointer_positions: str = "sequential"
    use_empty_supports: bool = True
    peft: Sam2PeftConfig = field(default_factory=Sam2PeftConfig)


@dataclass
class RagDataConfig:
    """Episodes: a query slice of a training case and its ``k`` retrieved supports.

    Attributes:
        bank: the support bank (``ragsam index build``); supports come from its prepared cache,
            never from the query's own case.
        prepared: the cache the query slices come from (``""``: the bank's own cache).
        train, val, holdout: as :class:`ragsam.training.config.DataConfig` (split names or
            case ids; validation on whole cases, or held-out slices of training cases).
        k: supports per query. z_prior: relative-z prior weight of the retrieval (as ``segment``).
        num_workers: DataLoader worker processes (``-1``: auto; results do not depend on it).
    """

    bank: str = ""
    prepared: str = ""
    train: list[str] = field(default_factory=lambda: ["train"])
    val: list[str] = field(default_factory=list)
    holdout: str = ""
    k: int = 4
    z_prior: float | None = 0.5
    num_workers: int = 0


@dataclass
class RagOptimConfig(OptimConfig):
    """``ragsam train``'s :class:`OptimConfig` plus the weight of SAM 2's object-score loss.

    Attributes:
        object_score_weight: weight of the binary cross-entropy between SAM 2's object-score
            logit of each organ the supports offer and "the organ is on the query slice",
            added to the Dice + CE loss (see :mod:`ragsam.training.rag_run`). SAM 2 gates an
            organ whose score is < 0 to a constant -1024 mask that carries no gradient, so
            without this term an organ switched off stays off. SAM 2's own training uses
            this loss (``loss_class``: sigmoid focal loss with gamma 0, alpha -1, i.e. plain
            BCE) with weight 1, the weight of its Dice term (facebookresearch/sam2
            ``training/loss_fns.py``, ``sam2.1_hiera_b+_MOSE_finetune.yaml``). ``0``: off.
    """

    object_score_weight: float = 1.0


@dataclass
class RagTrainConfig:
    """A full episodic training run; the same top-level keys as :class:`~ragsam.training.config.TrainConfig`."""

    data: RagDataConfig = field(default_factory=RagDataConfig)
    model: RagModelConfig = field(default_factory=RagModelConfig)
    optim: RagOptimConfig = field(default_factory=lambda: RagOptimConfig(lr=1e-4, warmup=50, max_iterations=2000,
                                                                         stop_iteration=None, batch_size=2))
    val: ValConfig = field(default_factory=lambda: ValConfig(every=200, batch_size=8))
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint_every: int = 200
    seed: int = 1234
    device: str = "auto"

    @property
    def last_iteration(self) -> int:
        """Number of optimiser steps the run takes when not stopped early."""
        return self.optim.last_iteration


def validate_rag(cfg: RagTrainConfig, source: str = "<config>") -> RagTrainConfig:
    """Refuse values that cannot work, quoting them."""
    o, p = cfg.optim, cfg.model.peft
    checks = [
        (o.max_iterations > 0, f"optim.max_iterations={o.max_iterations} must be > 0"),
        (o.stop_iteration is None or o.stop_iteration > 0, f"optim.stop_iteration={o.stop_iteration} must be > 0"),
        (o.batch_size > 0, f"optim.batch_size={o.batch_size} must be > 0"),
        (o.grad_accum > 0, f"optim.grad_accum={o.grad_accum} must be > 0"),
        (o.warmup >= 0 and o.lr > 0, f"optim.warmup={o.warmup} must be >= 0 and optim.lr={o.lr} > 0"),
        (o.object_score_weight >= 0, f"optim.object_score_weight={o.object_score_weight} must be >= 0"),
        (cfg.data.k >= 1, f"data.k={cfg.data.k} must be >= 1"),
        (cfg.data.z_prior is None or cfg.data.z_prior >= 0, f"data.z_prior={cfg.data.z_prior} must be >= 0"),
        (cfg.data.num_workers >= -1, f"data.num_workers={cfg.data.num_workers} must be >= 0, or -1 for auto"),
        (p.method in SAM2_PEFT_METHODS, f"model.peft.method={p.method!r} is not one of {', '.join(SAM2_PEFT_METHODS)}"),
        (p.decoder in SAM2_DECODER_MODES, f"model.peft.decoder={p.decoder!r} is not one of "
                                          f"{', '.join(SAM2_DECODER_MODES)}"),
        (bool(p.targets) and set(p.targets) <= set(SAM2_LORA_TARGETS),
         f"model.peft.targets={list(p.targets)} must be a non-empty subset of {', '.join(SAM2_LORA_TARGETS)}"),
        (cfg.model.pointer_positions in ("sequential", "shared"),
         f"model.pointer_positions={cfg.model.pointer_positions!r} must be 'sequential' or 'shared'"),
        (cfg.model.num_classes is None or cfg.model.num_classes >= 1,
         f"model.num_classes={cfg.model.num_classes} must be >= 1"),
        (cfg.checkpoint_every > 0, f"checkpoint_every={cfg.checkpoint_every} must be > 0"),
        (cfg.val.every >= 0, f"val.every={cfg.val.every} must be >= 0"),
        (cfg.log.every > 0, f"log.every={cfg.log.every} must be > 0"),
    ]
    for ok, problem in checks:
        if not ok:
            raise InputError(source, problem)
    check_ranks(p, "model.peft.", source)
    return cfg


def load_rag_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RagTrainConfig:
    """Defaults <- YAML file or preset name (``rag_lora``, ``rag_tiny``, ``rag_full``) <- overrides, validated."""
    resolved = None if path is None else resolve_preset(path, kind="rag")
    cfg = load_config(RagTrainConfig, resolved, overrides)
    return validate_rag(cfg, str(resolved) if resolved else "<command line>")
