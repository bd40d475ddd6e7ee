"""Dice + cross-entropy loss of SAMed, written in plain torch (no MONAI at import).

SAMed (``utils.DiceLoss`` and ``trainer.calc_loss``) trains with

    loss = 0.2 * CE(logits, labels) + 0.8 * Dice(softmax(logits), one_hot(labels))

where the Dice term is computed per class over the WHOLE batch (all pixels of
all images pooled), over all ``K + 1`` classes including background, with
squared terms in the denominator and a smoothing constant of ``1e-5`` added to
numerator and denominator, and then averaged over the classes:

    dice_c = 1 - (2 * sum(p_c * y_c) + 1e-5) / (sum(p_c ** 2) + sum(y_c ** 2) + 1e-5)

This is exactly ``monai.losses.DiceLoss(include_background=True,
to_onehot_y=True, softmax=True, squared_pred=True, batch=True, smooth_nr=1e-5,
smooth_dr=1e-5)`` (checked in tests/training/test_losses.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SMOOTH = 1e-5


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = SMOOTH) -> torch.Tensor:
    """Soft multi-class Dice loss (SAMed's), mean over the ``C`` classes.

    Args:
        logits: float (B, C, H, W) raw scores; softmax is applied here.
        labels: int64 (B, H, W) class ids in ``[0, C)``.
        smooth: added to numerator and denominator.
    Returns:
        A scalar tensor in ``[0, 1]``.
    """
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)  # pool batch and pixels: one Dice per class
    intersect = (probs * onehot).sum(dims)
    denom = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
    per_class = 1.0 - (2.0 * intersect + smooth) / (denom + smooth)
    return per_class.mean()


@dataclass
class LossParts:
    """The total loss and its two terms (all scalar tensors)."""

    total: torch.Tensor
    dice: torch.Tensor
    ce: torch.Tensor


class DiceCELoss(nn.Module):
    """``dice_weight * Dice + ce_weight * CE`` (SAMed: 0.8 / 0.2).

    Args:
        dice_weight: weight of the soft Dice term.
        ce_weight: weight of the mean pixel cross-entropy.
    """

    def __init__(self, dice_weight: float = 0.8, ce_weight: float = 0.2) -> None:
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)

    def parts(self, logits: torch.Tensor, labels: torch.Tensor) -> LossParts:
        """Loss terms for ``logits`` (B, C, H, W) and ``labels`` int64 (B, H, W)."""
        num_classes = logits.shape[1]
        # On CPU this check is free; on GPU it would force a host sync every step, and
        # ragsam.training.data.build_data has already checked every label id of the cache.
        if labels.device.type == "cpu" and labels.numel() and int(labels.max()) >= num_classes:
            # A label the model has no channel for would crash one_hot deep inside torch.
            raise ValueError(f"label id {int(labels.max())} >= number of model outputs {num_classes}")
        d = dice_loss(logits, labels)
        ce = F.cross_entropy(logits.float(), labels.long())
        return LossParts(self.dice_weight * d + self.ce_weight * ce, d, ce)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The weighted total as a scalar tensor."""
        return self.parts(logits, labels).total
