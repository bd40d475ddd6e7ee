"""SAMed's Dice + CE loss: hand-computed values and equality with MONAI."""

from __future__ import annotations

import math

import numpy as np
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


def test_nearest_indices_equal_scipy_zoom_order0():
    from scipy.ndimage import zoom

    from ragsam.training.losses import nearest_indices

    for size_in, size_out in ((512, 128), (64, 16), (8, 2), (7, 3)):
        ramp = np.arange(size_in, dtype=np.float32)[None, :].repeat(2, axis=0)
        expected = zoom(ramp, (1, size_out / size_in), order=0)[0].astype(np.int64)
        assert nearest_indices(size_in, size_out).tolist() == expected.tolist()
    assert nearest_indices(512, 128)[:3].tolist() == [0, 4, 8]
    assert nearest_indices(512, 128)[-3:].tolist() == [503, 507, 511]


def test_downsample_labels_equals_samed_zoom():
    from scipy.ndimage import zoom

    from ragsam.training.losses import downsample_labels

    labels = torch.randint(0, 9, (2, 64, 64), generator=torch.Generator().manual_seed(3))
    low = downsample_labels(labels, 16)
    for b in range(2):
        ref = zoom(labels[b].numpy(), (16 / 64, 16 / 64), order=0)
        assert np.array_equal(low[b].numpy(), ref)


class _FixedLogits(torch.nn.Module):
    """Zero logits at S/4 (upsample=False) and a confident wrong answer at S (to tell them apart)."""

    def forward(self, images, upsample=True):
        b, _, s, _ = images.shape
        if upsample:
            return torch.cat([torch.full((b, 1, s, s), 9.0), torch.zeros(b, 1, s, s)], dim=1)
        return torch.zeros(b, 2, s // 4, s // 4)


def test_samed_low_resolution_loss_equals_hand_computation():
    from ragsam.training.losses import training_loss

    # Two 8 x 8 labels; SAMed's zoom to 2 x 2 keeps rows/columns 0 and 7 (the corners).
    labels = torch.ones(2, 8, 8, dtype=torch.long)
    labels[0, 0, 0] = 0                      # corner -> low-res background pixel
    labels[1, 3:5, 3:5] = 0                  # centre only: not sampled at low resolution
    images = torch.zeros(2, 3, 8, 8)
    parts = training_loss(_FixedLogits(), images, labels, DiceCELoss(0.8, 0.2), low_res=True)
    # Low-res batch: 8 pixels, class 0 at 1, class 1 at 7; zero logits -> p = 1/2 everywhere.
    # class 0: 1 - (2 * 0.5 + e) / (8 * 0.25 + 1 + e); class 1: 1 - (2 * 3.5 + e) / (8 * 0.25 + 7 + e)
    e = 1e-5
    dice = ((1 - (1 + e) / (3 + e)) + (1 - (7 + e) / (9 + e))) / 2
    assert parts.dice.item() == pytest.approx(dice, abs=1e-7)
    assert parts.ce.item() == pytest.approx(math.log(2), abs=1e-7)
    assert parts.total.item() == pytest.approx(0.8 * dice + 0.2 * math.log(2), abs=1e-7)
    full = training_loss(_FixedLogits(), images, labels, DiceCELoss(0.8, 0.2), low_res=False)
    assert full.ce.item() > 1.0  # the S x S path was not taken above
