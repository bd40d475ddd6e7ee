"""``train_rag(cfg, out)``: episodic fine-tuning of SAM 2 for retrieval (``ragsam train-rag``).

The run folder has the layout of ``ragsam train``'s (:mod:`ragsam.training.run`):
``config.yaml`` (resolved :class:`~ragsam.training.rag_config.RagTrainConfig`),
``model.safetensors`` (trainable tensors of the best validation, or the last,
iteration; metadata ``format: ragsam-rag-run``), ``last.safetensors``,
``checkpoints/state.pt``, ``log.csv``, ``val.json``. It runs the same loop
(:func:`~ragsam.training.loop.run_loop`), schedule, data stream, checkpoints,
torchrun DDP, bf16 rule and early stopping; only the micro-batch loss
(:func:`episode_step`) and the validation (:func:`~ragsam.training.rag_validate.validate_rag`) differ.

The loss is the paper's ``0.8 * Dice + 0.2 * CE`` on the class logits of
:class:`~ragsam.training.rag_model.RagEpisodeModel` plus ``optim.object_score_weight``
times SAM 2's object-score loss (:func:`~ragsam.training.losses.object_score_loss`:
BCE of each offered organ's score against "the organ is on the query slice", as SAM 2's
own training; without it an organ whose score starts < 0 is gated to a constant mask
and never trains). It is computed per episode and averaged over the micro-batch: each
episode has its own organs, and a per-episode mean makes ``W`` processes of ``B``
episodes the same step as one process of ``W * B`` (DDP averages the ranks' gradients).
The logged ``loss`` is this total; ``loss_dice`` / ``loss_ce`` are the class-logit terms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ragsam.training.distributed import DistInfo
from ragsam.training.losses import DiceCELoss, LossParts, object_score_loss
from ragsam.training.rag_config import RagTrainConfig, validate_rag
from ragsam.training.rag_model import RUN_FORMAT, build_rag_model
from ragsam.training.run import TrainingTask, train
from ragsam.training.sampler import Batch
from ragsam.utils.precision import autocast


def episode_step(model: nn.Module, batch: Batch, info: DistInfo, loss_fn: DiceCELoss, optim: Any) -> LossParts:
    """Mean per-episode loss of one micro-batch ``(B, 1 + k, S, S)`` (see module docstring).

    ``optim``: the run's :class:`~ragsam.training.rag_config.RagOptimConfig` (``bf16``, ``bf16_cpu``,
    ``object_score_weight``).
    """
    images = batch.images.to(info.device, non_blocking=True)
    labels = batch.labels.to(info.device, non_blocking=True)
    weight = float(optim.object_score_weight)
    with autocast(info.device, optim.bf16, cpu=optim.bf16_cpu):
        out = model(images, labels, object_scores=True)
    parts = [loss_fn.parts(out.logits[i:i + 1].float(), labels[i:i + 1, 0]) for i in range(images.shape[0])]
    objects = [object_score_loss(out.object_scores[i], out.offered[i], labels[i, 0]) for i in range(images.shape[0])]
    n = len(parts)
    total = sum(p.total + weight * o for p, o in zip(parts, objects, strict=True)) / n
    return LossParts(total, sum(p.dice for p in parts) / n,  # type: ignore[arg-type]
                     sum(p.ce for p in parts) / n)  # type: ignore[arg-type]


def _build_data(cfg: RagTrainConfig, info: DistInfo) -> Any:
    from ragsam.training.rag_data import build_episodes

    return build_episodes(cfg, device=str(info.device))


def _validate(model: nn.Module, data: Any, info: DistInfo) -> Any:
    from ragsam.training.rag_validate import validate_rag as validate_episodes

    return validate_episodes(model, data, info)  # type: ignore[arg-type]


RAG_TASK = TrainingTask(
    config_cls=RagTrainConfig, filled=("model.num_classes",), validate=validate_rag, build_data=_build_data,
    build_model=lambda cfg, data, info: build_rag_model(cfg, info.device), saved_module=lambda m: m.sam2,
    metadata=lambda cfg, data: {"format": RUN_FORMAT, "sam2": cfg.model.weights, "num_classes": str(data.num_classes),
                                "k": str(cfg.data.k)},
    augment=lambda cfg: None, step=episode_step, validator=_validate)


def train_rag(cfg: RagTrainConfig | None, out: str | Path, *, resume: bool = False, force: bool = False,
              stop_after: int | None = None) -> Path:
    """Train (or resume) an episodic SAM 2 run and return its folder.

    Args:
        cfg: the configuration (``None`` with ``resume``: the run's own ``config.yaml``).
        out: run folder. resume / force / stop_after: as :func:`ragsam.training.train`.
    Raises:
        InputError / OutputExistsError: bad bank, cases or settings; an existing folder without ``force``.
    """
    return train(cfg, out, resume=resume, force=force, stop_after=stop_after, task=RAG_TASK)  # type: ignore[arg-type]
