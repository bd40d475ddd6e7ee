"""The optimisation loop: steps, validation, early stopping, checkpoints.

One iteration is one optimiser step over ``grad_accum`` micro-batches. The
learning rate, the data order and every augmentation are pure functions of the
seed and the iteration / stream position, and the checkpoint restores those
plus the optimiser moments, so stopping after a checkpoint and resuming gives
bit-identical weights to an uninterrupted run (same device, world size and CPU
thread count - BLAS sums depend on how the work is split).

Batches arrive loaded and augmented by the stream's DataLoader workers (pinned
on CUDA, copied with ``non_blocking=True``); autocast follows
:mod:`ragsam.utils.precision` (``optim.bf16``, ``optim.bf16_cpu``).

Host reads of device values (each one waits for the GPU queue to drain):

* every ``log.every`` iterations, at the last and at each validation: the three
  loss sums, accumulated on the device in between (``sums.tolist()``);
* at validation: predictions are copied to the host per batch
  (:mod:`ragsam.training.validate`);
* every step: one boolean, "are the loss and the gradient norm finite?", read before the
  optimiser step (as AMP's ``GradScaler`` reads ``found_inf``), so a NaN or Inf stops the
  run with a clear error at the first step it appears, before it reaches the weights;
* at checkpoints: the trainable tensors and optimiser moments;
* multi-process only: the all-reduce of those logging values (at log time) and
  the broadcast of the stop flag (at validations and the last iteration only).

Nothing else reads the device in a step: the learning rate is a Python float,
``clip_grad_norm_`` scales on the device (its norm feeds the finiteness flag), AdamW's
step counts live on the host, and :class:`DiceCELoss` checks label ids only for
CPU tensors (``one_hot`` with a given class count checks nothing on CUDA;
``build_data`` has checked every label id of the cache).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ragsam.errors import InputError
from ragsam.training.checkpoint import STATE_FILE, load_trainable_tensors, save_state, set_rng_state
from ragsam.training.config import TrainConfig
from ragsam.training.distributed import DistInfo, all_mean, all_reduce_sum, broadcast_flag
from ragsam.training.logging_utils import NullLogger, fmt
from ragsam.training.losses import DiceCELoss, LossParts, training_loss
from ragsam.training.sampler import Batch, BatchStream
from ragsam.training.schedule import WarmupPoly
from ragsam.training.validate import ValResult, validate
from ragsam.utils.fault_points import pause_at
from ragsam.utils.precision import autocast


class NonFiniteError(InputError):
    """The loss or a gradient became NaN/Inf: the data or the optimiser settings are at fault."""


@dataclass
class LoopState:
    """What the loop carries between iterations (and into the checkpoint)."""

    iteration: int = 0
    best_score: float = -1.0
    best_iteration: int = 0
    since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    def best_dict(self) -> dict[str, float | int]:
        """The ``best`` entry of the checkpoint."""
        return {"score": self.best_score, "iteration": self.best_iteration, "since_best": self.since_best}


@dataclass
class LoopContext:
    """Everything the loop uses, built by :mod:`ragsam.training.run`.

    Attributes:
        model: the (possibly DDP-wrapped) model that trains. module: the bare model.
        val_dataset / val_cases: validation slices by case (empty dict = none).
        save_weights: callback ``(path, metadata)`` writing the trainable tensors (rank 0).
        write_val: callback writing ``val.json`` (rank 0).
    """

    cfg: TrainConfig
    run_dir: Path
    info: DistInfo
    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupPoly
    stream: BatchStream
    val_dataset: Any
    val_cases: dict[str, list[int]]
    logger: NullLogger
    save_weights: Any
    write_val: Any
    # What a task changes (ragsam train-rag): the loss of one micro-batch, and validation.
    step: Callable[[nn.Module, Batch, DistInfo, DiceCELoss, Any], LossParts] | None = None
    validator: Callable[[], ValResult] | None = None


def sam_step(model: nn.Module, batch: Batch, info: DistInfo, loss_fn: DiceCELoss, optim: Any) -> LossParts:
    """Loss of one micro-batch of slices: ``model(images (B, 3, S, S)) -> logits (B, K+1, S, S)``."""
    # augmented in the workers; pinned on CUDA, so the host queues the copy and goes on
    images = batch.images.to(info.device, non_blocking=True)
    labels = batch.labels.to(info.device, non_blocking=True)
    low_res = optim.loss_resolution == "low"  # SAMed: S/4 logits against the nearest-downsampled label
    return training_loss(model, images, labels, loss_fn, low_res, autocast(info.device, optim.bf16, cpu=optim.bf16_cpu))


def restore_loop_state(state: dict[str, Any], src: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                       stream: BatchStream, schedule: WarmupPoly) -> LoopState:
    """Put a loaded ``state.pt`` back into the model, optimiser, stream and generators; the loop state.

    Raises:
        InputError: the checkpoint does not fit this run (other tensors, world size or schedule).
    """
    load_trainable_tensors(model, state["model"], src)
    try:
        optimizer.load_state_dict(state["optimizer"])
        stream.load_state_dict(state["stream"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InputError(src, f"checkpoint does not fit this run ({exc})") from None
    if state["schedule"] != schedule.state_dict():
        raise InputError(src, f"schedule changed since the checkpoint ({state['schedule']})")
    set_rng_state(state["rng"])
    best = state["best"]
    return LoopState(int(state["iteration"]), float(best["score"]), int(best["iteration"]),
                     int(best["since_best"]), list(state["history"]), bool(state["done"]))


def _checkpoint(ctx: LoopContext, st: LoopState) -> None:
    if ctx.info.is_main:
        save_state(ctx.run_dir / STATE_FILE, iteration=st.iteration, model=ctx.module, optimizer=ctx.optimizer,
                   schedule=ctx.schedule.state_dict(), stream=ctx.stream.state_dict(), best=st.best_dict(),
                   history=st.history, done=st.done)


def _validate(ctx: LoopContext, st: LoopState) -> ValResult:
    cfg = ctx.cfg
    res = ctx.validator() if ctx.validator is not None else validate(
        ctx.module, ctx.val_dataset, ctx.val_cases, cfg.model.num_classes, cfg.val.batch_size,
        ctx.info, bf16=cfg.optim.bf16, bf16_cpu=cfg.optim.bf16_cpu)
    score = -1.0 if math.isnan(res.mean_dice) else res.mean_dice
    st.history.append({"iteration": st.iteration, **res.to_json()})
    if score > st.best_score:
        st.best_score, st.best_iteration, st.since_best = score, st.iteration, 0
        if ctx.info.is_main:
            ctx.save_weights(ctx.run_dir / "model.safetensors",
                             {"iteration": str(st.iteration), "val_dice": f"{score:.6f}", "selected": "best"})
    else:
        st.since_best += 1
    if ctx.info.is_main:
        ctx.write_val(st)
    ctx.logger.scalar("val/dice", score, st.iteration)
    return res


def _stop_if_not_finite(loss: torch.Tensor, trainable: list[nn.Parameter], grad_clip: float | None,
                        iteration: int, info: DistInfo) -> None:
    """Raise :class:`NonFiniteError` when the loss or the gradient norm is NaN/Inf (clips when asked).

    In DDP the gradients are already all-reduced; the flag is all-reduced too, so every rank
    stops together.
    """
    grads = [p.grad for p in trainable if p.grad is not None]
    if grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    elif grads:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    else:
        norm = torch.zeros((), device=loss.device)
    bad = (~torch.isfinite(loss.float())) | (~torch.isfinite(norm.float()))
    if info.distributed:
        bad = all_reduce_sum(bad.to(torch.float64).reshape(1), info) > 0
    if bool(bad.item()):
        what = "loss" if not math.isfinite(float(loss)) else "gradient norm"
        raise NonFiniteError(None, f"training stopped at iteration {iteration}: the {what} is not finite "
                                   f"(loss {float(loss):g}, gradient norm {float(norm):g}); check the images "
                                   "for extreme values and lower optim.lr")


def run_loop(ctx: LoopContext, st: LoopState, stop_after: int | None = None) -> LoopState:
    """Train from ``st.iteration`` to the configured end (or early stop).

    Args:
        stop_after: testing hook that simulates a kill - return right after
            iteration ``stop_after`` (and its checkpoint, if one falls there)
            without writing the final outputs.
    Returns:
        The final loop state (``done`` is true unless stopped by ``stop_after``).
    """
    cfg, info = ctx.cfg, ctx.info
    o = cfg.optim
    last = cfg.last_iteration
    loss_fn = DiceCELoss(o.dice_weight, o.ce_weight)
    trainable = [p for p in ctx.module.parameters() if p.requires_grad]
    step = ctx.step or sam_step
    batches = iter(ctx.stream)
    ctx.model.train()
    t0 = time.perf_counter()
    while st.iteration < last and not st.done:
        it = st.iteration
        lr = ctx.schedule.apply(ctx.optimizer, it)
        ctx.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(3, device=info.device)  # stays on the device: no host sync per step
        epoch = 0
        for micro in range(o.grad_accum):
            batch = next(batches)
            epoch = batch.epoch
            sync = (contextlib.nullcontext() if micro == o.grad_accum - 1 or not info.distributed
                    else ctx.model.no_sync())
            with sync:
                parts = step(ctx.model, batch, info, loss_fn, o)
                (parts.total / o.grad_accum).backward()
            sums += torch.stack((parts.total, parts.dice, parts.ce)).detach() / o.grad_accum
        _stop_if_not_finite(sums[0], trainable, o.grad_clip, it + 1, info)
        ctx.optimizer.step()
        st.iteration = it + 1

        val_due = bool(ctx.val_cases) and ((cfg.val.every and st.iteration % cfg.val.every == 0)
                                           or st.iteration == last)
        log_due = st.iteration % cfg.log.every == 0 or st.iteration == last or val_due
        if log_due:
            loss, dice, ce = all_mean(sums.tolist(), info)  # the only host read, at log time
            val_text = ""
            if val_due:
                res = _validate(ctx, st)
                val_text = fmt(res.mean_dice if not math.isnan(res.mean_dice) else None)
            ctx.logger.log({"iteration": st.iteration, "epoch": epoch, "lr": fmt(lr), "loss": fmt(loss),
                            "loss_dice": fmt(dice), "loss_ce": fmt(ce), "val_dice": val_text,
                            "seconds": f"{time.perf_counter() - t0:.2f}"})
            ctx.logger.advance(st.iteration, f"loss {loss:.4f}" + (f" val {val_text}" if val_text else ""))
        if val_due and cfg.val.patience and st.since_best >= cfg.val.patience:
            st.done = True  # early stop: same decision on every rank (counts were all-reduced)
        if st.iteration >= last:
            st.done = True
        if info.distributed and (val_due or st.iteration >= last):
            # Only these can stop the run, with the same outcome on every rank (validation
            # counts are all-reduced); broadcasting every step would sync the host each step.
            st.done = broadcast_flag(st.done, info)
        if st.done or st.iteration % cfg.checkpoint_every == 0:
            _checkpoint(ctx, st)
        pause_at(f"train:iteration-{st.iteration}")
        if stop_after is not None and st.iteration >= stop_after and not st.done:
            return st
    return st
