"""Learning-rate schedule: linear warm-up, then polynomial decay (SAMed's recipe).

SAMed's trainer (``trainer_synapse``) starts at ``base_lr / warmup_period`` and,
after optimiser step ``i``, sets

    lr = base_lr * (i + 1) / warmup_period                      if i < warmup_period
    lr = base_lr * (1 - (i - warmup_period) / max_iterations) ** 0.9   otherwise

Note the decay divides by ``max_iterations`` (not ``max_iterations - warmup``),
so the rate never reaches zero. We use the same two formulas but evaluate them
at the step about to be taken (``lr(i)`` is used FOR step ``i``), which removes
SAMed's one-step lag; otherwise the curve is identical. The schedule is a pure
function of the iteration, so resuming needs only the iteration number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WarmupPoly:
    """``lr(i)`` for optimiser step ``i`` (0-based).

    Args:
        base_lr: peak learning rate (SAMed 0.005).
        warmup: linear warm-up steps (SAMed 250); 0 disables warm-up.
        max_iterations: length of the schedule (SAMed 18,600 = 200 epochs).
        power: exponent of the polynomial decay (SAMed 0.9).
    """

    base_lr: float
    warmup: int
    max_iterations: int
    power: float = 0.9

    def lr_at(self, iteration: int) -> float:
        """Learning rate used for step ``iteration``."""
        if iteration < self.warmup:
            return self.base_lr * (iteration + 1) / self.warmup
        shift = iteration - self.warmup
        frac = max(0.0, 1.0 - shift / self.max_iterations)
        return self.base_lr * frac**self.power

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set every parameter group's ``lr`` for step ``iteration``; returns it."""
        lr = self.lr_at(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, float | int]:
        """Plain numbers (stored in the checkpoint to detect a changed schedule)."""
        return {"base_lr": self.base_lr, "warmup": self.warmup,
                "max_iterations": self.max_iterations, "power": self.power}
