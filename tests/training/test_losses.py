"""SAMed's Dice + CE loss: hand-computed values and equality with MONAI."""

from __future__ import annotations

import math

import pytest
import torch

from ragsam.training.losses import DiceCELoss, dice_loss


def test_dice_loss_hand_computed():
    # Zero logits -> p = 0.5 for both classes at both pixels; labels [0, 1].
    logits = torch.zeros(1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    # per class: intersect 0.5, sum p^2 = 0.5, sum y^2 = 1 -> 1 - (1 + 1e-5) / (1.5 + 1e-5)
    expected = 1 - (1 + 1e-5) / (1.5 + 1e-5)
    assert dice_loss(logits, labels).item() == pytest.approx(expected, abs=1e-7)
    parts = DiceCELoss(0.8, 0.2).parts(logits, labels)
    assert parts.ce.item() == pytest.approx(math.log(2), abs=1e-7)
    assert parts.total.item() == pytest.approx(0.8 * expected + 0.2 * math.log(2), abs=1e-7)


def test_perfect_prediction_has_near_zero_dice_loss():
    labels = torch.tensor([[[0, 1], [2, 2]]])
    logits = 50.0 * torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert dice_loss(logits, labels).item() < 1e-6


def test_equals_monai_dice_and_dice_ce():
    from monai.losses import DiceCELoss as MonaiDiceCE
    from monai.losses import DiceLoss as MonaiDice

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 16, 16)
    labels = torch.randint(0, 5, (3, 16, 16))
    settings = dict(include_background=True, to_onehot_y=True, softmax=True, squared_pred=True, batch=True,
                    smooth_nr=1e-5, smooth_dr=1e-5)
    ref_dice = MonaiDice(**settings)(logits, labels[:, None])
    assert torch.allclose(dice_loss(logits, labels), ref_dice, atol=1e-6)
    ref_total = MonaiDiceCE(**settings, lambda_dice=0.8, lambda_ce=0.2)(logits, labels[:, None])
    assert torch.allclose(DiceCELoss(0.8, 0.2)(logits, labels), ref_total, atol=1e-6)


def test_label_beyond_outputs_is_refused():
    with pytest.raises(ValueError, match="label id 4 >= number of model outputs 3"):
        DiceCELoss().parts(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 4))
