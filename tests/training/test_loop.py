"""The optimisation loop (``ragsam.training.loop.run_loop``) on a toy 1x1-conv segmenter.

Each test drives the real loop (schedule, gradient accumulation, finiteness check,
validation bookkeeping, checkpoint) and checks the weights, the state or the files it
leaves against values computed here independently.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ragsam.training.checkpoint import STATE_FILE, load_state
from ragsam.training.config import TrainConfig
from ragsam.training.distributed import DistInfo
from ragsam.training.logging_utils import NullLogger
from ragsam.training.loop import LoopContext, LoopState, NonFiniteError, restore_loop_state, run_loop
from ragsam.training.losses import dice_loss
from ragsam.training.schedule import WarmupPoly
from ragsam.training.validate import ValResult

CLASSES = 3
LR = 0.5


class ToySegmenter(nn.Module):
    """images (B, 3, S, S) -> logits (B, CLASSES, S, S) by one 1x1 convolution."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, CLASSES, 1)

    def forward(self, images: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        return self.conv(images)


class ListStream:
    """Yields the given batches in order from its position (a resumable stream, as the loop needs)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches, self.position = batches, 0

    def __iter__(self) -> Any:
        while self.position < len(self.batches):
            images, labels = self.batches[self.position]
            self.position += 1
            yield SimpleNamespace(images=images, labels=labels, epoch=0)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


class RecordingLogger(NullLogger):
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


def _data(n: int, seed: int, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen), torch.randint(0, CLASSES, (n, size, size), generator=gen)


def _context(tmp_path: Path, batches: list[tuple[torch.Tensor, torch.Tensor]], *, grad_accum: int = 1,
             iterations: int = 1, dice_weight: float = 0.0, ce_weight: float = 1.0, val_every: int = 0,
             patience: int = 0, val_cases: dict[str, list[int]] | None = None, checkpoint_every: int = 1000,
             momentum: float = 0.0) -> tuple[LoopContext, list, list]:
    cfg = TrainConfig()
    cfg.optim.grad_accum, cfg.optim.max_iterations, cfg.optim.stop_iteration = grad_accum, iterations, None
    cfg.optim.dice_weight, cfg.optim.ce_weight, cfg.optim.bf16 = dice_weight, ce_weight, False
    cfg.val.every, cfg.val.patience, cfg.log.every, cfg.checkpoint_every = val_every, patience, 1, checkpoint_every
    model = ToySegmenter()
    saved: list[dict[str, str]] = []
    written: list[int] = []
    ctx = LoopContext(cfg=cfg, run_dir=tmp_path, info=DistInfo(0, 1, 0, torch.device("cpu")), model=model,
                      module=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR, momentum=momentum),
                      schedule=WarmupPoly(base_lr=LR, warmup=0, max_iterations=1000, power=0.9),
                      stream=ListStream(batches), val_dataset=None, val_cases=val_cases or {},
                      logger=RecordingLogger(), save_weights=lambda path, meta: saved.append(meta),
                      write_val=lambda st: written.append(st.iteration))
    (tmp_path / STATE_FILE).parent.mkdir(parents=True, exist_ok=True)
    return ctx, saved, written


def _sgd_step(loss_of: Any) -> dict[str, torch.Tensor]:
    """Reference: one plain SGD step (lr ``LR``) of a fresh toy model on ``loss_of(model)``."""
    model = ToySegmenter()
    loss_of(model).backward()
    return {n: (p - LR * p.grad).detach() for n, p in model.named_parameters()}


def test_two_micro_batches_equal_one_batch_of_twice_the_size_for_cross_entropy(tmp_path: Path) -> None:
    (a_img, a_lab), (b_img, b_lab) = _data(2, seed=1), _data(2, seed=2)
    ctx, _, _ = _context(tmp_path / "accum", [(a_img, a_lab), (b_img, b_lab)], grad_accum=2)
    run_loop(ctx, LoopState())
    whole, _, _ = _context(tmp_path / "whole", [(torch.cat([a_img, b_img]), torch.cat([a_lab, b_lab]))])
    run_loop(whole, LoopState())
    expected = _sgd_step(lambda m: F.cross_entropy(m(torch.cat([a_img, b_img])), torch.cat([a_lab, b_lab])))
    assert not torch.equal(expected["conv.weight"], ToySegmenter().conv.weight)  # the step moved the weights
    for name, param in ctx.module.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(param.detach(), dict(whole.module.named_parameters())[name].detach(),
                                   rtol=0, atol=1e-6)


def test_accumulated_dice_is_the_mean_of_micro_batch_losses_not_the_pooled_dice(tmp_path: Path) -> None:
    # SAMed's Dice pools the batch, so with Dice on, accumulation averages the two micro-batch
    # losses: that is what the loop does (and the logged loss is that mean).
    (a_img, a_lab), (b_img, b_lab) = _data(2, seed=3), _data(2, seed=4)
    ctx, _, _ = _context(tmp_path, [(a_img, a_lab), (b_img, b_lab)], grad_accum=2, dice_weight=0.8,
                         ce_weight=0.2)
    run_loop(ctx, LoopState())

    def total(m: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = m(images)
        return 0.8 * dice_loss(logits, labels) + 0.2 * F.cross_entropy(logits, labels)

    mean_of_parts = _sgd_step(lambda m: (total(m, a_img, a_lab) + total(m, b_img, b_lab)) / 2)
    pooled = _sgd_step(lambda m: total(m, torch.cat([a_img, b_img]), torch.cat([a_lab, b_lab])))
    weight = ctx.module.conv.weight.detach()
    torch.testing.assert_close(weight, mean_of_parts["conv.weight"], rtol=0, atol=1e-6)
    assert (weight - pooled["conv.weight"]).abs().max() > 1e-5
    fresh = ToySegmenter()
    with torch.no_grad():
        logged = (total(fresh, a_img, a_lab) + total(fresh, b_img, b_lab)).item() / 2
    row = ctx.logger.rows[0]
    assert row["iteration"] == 1 and float(row["loss"]) == pytest.approx(logged, rel=1e-5)
    assert float(row["lr"]) == LR


def test_non_finite_loss_stops_before_the_weights_change(tmp_path: Path) -> None:
    images, labels = _data(2, seed=5)
    bad_images = images.clone()
    bad_images[0, 0, 0, 0] = float("nan")
    ctx, _, _ = _context(tmp_path, [(images, labels), (bad_images, labels)], iterations=3)
    with pytest.raises(NonFiniteError, match="training stopped at iteration 2: the loss is not finite"):
        run_loop(ctx, LoopState())
    after_one = _sgd_step(lambda m: F.cross_entropy(m(images), labels))
    torch.testing.assert_close(ctx.module.conv.weight.detach(), after_one["conv.weight"], rtol=0, atol=1e-6)
    assert not (tmp_path / STATE_FILE).exists()  # nothing checkpointed from the bad step


def test_early_stopping_counts_validations_without_improvement(tmp_path: Path) -> None:
    scores = iter([0.5, 0.7, 0.6, math.nan, 0.9])  # the 5th is never reached: patience 2 stops at 4
    batches = [_data(1, seed=10 + i) for i in range(10)]
    ctx, saved, written = _context(tmp_path, batches, iterations=10, val_every=1, patience=2,
                                   val_cases={"0001": [0]})
    ctx.validator = lambda: ValResult(mean_dice=next(scores), per_case={}, per_organ={})
    st = run_loop(ctx, LoopState())
    assert st.done and st.iteration == 4
    assert (st.best_score, st.best_iteration, st.since_best) == (0.7, 2, 2)
    assert [h["iteration"] for h in st.history] == [1, 2, 3, 4]
    assert st.history[3]["mean_dice"] is None  # NaN (nothing scored) counts as no improvement
    assert saved == [{"iteration": "1", "val_dice": "0.500000", "selected": "best"},
                     {"iteration": "2", "val_dice": "0.700000", "selected": "best"}]
    assert written == [1, 2, 3, 4]
    assert [r["val_dice"] for r in ctx.logger.rows] == ["0.5", "0.7", "0.6", ""]
    state = load_state(tmp_path / STATE_FILE)  # the early stop writes the final checkpoint
    assert state["iteration"] == 4 and state["done"] is True
    assert state["best"] == {"score": 0.7, "iteration": 2, "since_best": 2}


def test_resume_from_a_checkpoint_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    batches = [_data(2, seed=20 + i) for i in range(3)]
    full, _, _ = _context(tmp_path / "full", batches, iterations=3, momentum=0.9)
    run_loop(full, LoopState())
    cut, _, _ = _context(tmp_path / "cut", batches, iterations=3, momentum=0.9, checkpoint_every=1)
    st = run_loop(cut, LoopState(), stop_after=1)  # a kill right after iteration 1's checkpoint
    assert st.iteration == 1 and not st.done
    resumed, _, _ = _context(tmp_path / "cut", batches, iterations=3, momentum=0.9, checkpoint_every=1)
    with torch.no_grad():
        resumed.module.conv.weight.zero_()  # the checkpoint, not the seed, must supply the weights
    state_file = tmp_path / "cut" / STATE_FILE
    st = restore_loop_state(load_state(state_file), state_file, resumed.module, resumed.optimizer,
                            resumed.stream, resumed.schedule)
    assert (st.iteration, st.done, resumed.stream.position) == (1, False, 1)
    st = run_loop(resumed, st)
    assert st.iteration == 3 and st.done
    for name, param in resumed.module.named_parameters():
        assert torch.equal(param, dict(full.module.named_parameters())[name]), name
    lrs = [resumed.schedule.lr_at(i) for i in (1, 2)]
    assert lrs[0] == pytest.approx(LR * (1 - 1 / 1000) ** 0.9)
    assert [r["iteration"] for r in resumed.logger.rows] == [2, 3]
    assert [float(r["lr"]) for r in resumed.logger.rows] == [float(f"{lr:.6g}") for lr in lrs]
