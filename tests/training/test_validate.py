"""3D Dice from counts: hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from ragsam.training.validate import dice_counts, scores_from_counts


def test_dice_counts_and_scores_by_hand():
    gt = torch.tensor([[[1, 1, 0], [2, 0, 0]], [[1, 0, 0], [0, 0, 0]]])  # two slices of one case
    pred = torch.tensor([[[1, 0, 0], [2, 2, 0]], [[1, 1, 3], [0, 0, 0]]])
    counts = dice_counts(pred, gt, num_classes=3)
    assert counts.tolist() == [[2, 3, 3], [1, 2, 1], [0, 1, 0]]
    res = scores_from_counts(["a"], counts[None])
    # organ 1: 2*2/(3+3); organ 2: 2*1/(2+1); organ 3 absent from the truth: not scored
    assert res.per_case["a"] == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3)}
    assert res.mean_dice == pytest.approx(2 / 3)


def test_mean_over_cases_of_organ_means():
    counts = torch.zeros(2, 2, 3, dtype=torch.float64)
    counts[0, 0] = torch.tensor([5, 5, 5])   # case a organ 1: 1.0
    counts[0, 1] = torch.tensor([0, 2, 2])   # case a organ 2: 0.0
    counts[1, 0] = torch.tensor([1, 2, 2])   # case b organ 1: 0.5
    res = scores_from_counts(["a", "b"], counts)
    assert res.mean_dice == pytest.approx((0.5 + 0.5) / 2)
    assert res.per_organ == {1: pytest.approx(0.75), 2: pytest.approx(0.0)}
    assert math.isnan(scores_from_counts(["c"], torch.zeros(1, 2, 3)).mean_dice)
