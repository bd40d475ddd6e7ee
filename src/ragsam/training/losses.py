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

SAMed takes this loss on the decoder's low-resolution logits (S/4, 128 px at
512) against the label shrunk by ``scipy.ndimage.zoom(label, 1/4, order=0)``
(its ``RandomGenerator``): :func:`downsample_labels` reproduces that sampling
exactly (``optim.loss_resolution: low``); ``full`` takes it on the logits
upsampled to S against the full label.
"""

from __future__ import annotations

import contextlib
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


def nearest_indices(size_in: int, size_out: int) -> torch.Tensor:
    """Source rows of ``scipy.ndimage.zoom(order=0)`` from ``size_in`` to ``size_out`` samples.

    scipy maps output ``i`` to input ``i * (size_in - 1) / (size_out - 1)`` (corners
    aligned) and rounds half up: ``floor(i * (n - 1) / (m - 1) + 1/2)``, computed here in
    integers. 512 -> 128 gives 0, 4, 8, ..., 499, 503, 507, 511.
    """
    if size_out == 1:
        return torch.zeros(1, dtype=torch.long)
    i = torch.arange(size_out, dtype=torch.long)
    return (2 * i * (size_in - 1) + (size_out - 1)) // (2 * (size_out - 1))


def downsample_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Labels (B, H, W) -> (B, size, size) by SAMed's nearest-neighbour zoom (see :func:`nearest_indices`)."""
    rows = nearest_indices(labels.shape[-2], size).to(labels.device)
    cols = nearest_indices(labels.shape[-1], size).to(labels.device)
    return labels.index_select(-2, rows).index_select(-1, cols)


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


def object_score_loss(scores: torch.Tensor, offered: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SAM 2's object-score loss of one episode: mean BCE over the organs the supports offer.

    SAM 2's training (facebookresearch/sam2 ``training/loss_fns.py``, ``loss_class``) takes a
    sigmoid focal loss with gamma 0 and no alpha - plain binary cross-entropy - between the
    object-score logit and "the object is in the target mask".

    Args:
        scores: float ``(K,)`` object-score logits of organs ``1..K``.
        offered: bool ``(K,)``, the organs that were predicted (the others are not counted).
        labels: int ``(S, S)`` query labels (organ ``o`` = id ``o``; ids > K are ignored).
    Returns:
        A scalar tensor; exactly 0 when no organ is offered.
    """
    k = scores.shape[0]
    present = torch.bincount(labels.reshape(-1).long(), minlength=k + 1)[1:k + 1] > 0
    bce = F.binary_cross_entropy_with_logits(scores.float(), present.float(), reduction="none")
    weight = offered.float()
    return (bce * weight).sum() / weight.sum().clamp(min=1.0)


def training_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, loss_fn: DiceCELoss,
                  low_res: bool, precision: contextlib.AbstractContextManager | None = None) -> LossParts:
    """The loss of one training micro-batch, as the training loop takes it.

    Args:
        model: maps images (B, 3, S, S) to logits (B, C, S, S); with ``upsample=False``
            to the decoder's (B, C, S/4, S/4) logits (:class:`~ragsam.models.sam.MultiOrganSam`).
        images: float (B, 3, S, S). labels: int64 (B, S, S).
        loss_fn: the Dice + CE loss.
        low_res: SAMed's ``optim.loss_resolution: low`` - the loss on the S/4 logits
            against :func:`downsample_labels`; else on the S logits and full labels.
        precision: context for the forward pass only (autocast); the loss is fp32.
    """
    with precision or contextlib.nullcontext():
        logits = model(images, upsample=False) if low_res else model(images)
    if low_res:
        labels = downsample_labels(labels, logits.shape[-1])
    return loss_fn.parts(logits.float(), labels)
