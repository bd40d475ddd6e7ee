"""Warm-up + polynomial learning-rate schedule against SAMed's update rule."""

from __future__ import annotations

import pytest

from ragsam.training.schedule import WarmupPoly


def test_hand_values():
    s = WarmupPoly(base_lr=0.01, warmup=4, max_iterations=20, power=0.9)
    assert s.lr_at(0) == pytest.approx(0.0025)
    assert s.lr_at(3) == pytest.approx(0.01)
    assert s.lr_at(4) == pytest.approx(0.01)
    assert s.lr_at(5) == pytest.approx(0.01 * (19 / 20) ** 0.9)
    assert s.lr_at(14) == pytest.approx(0.01 * 0.5**0.9)
    assert s.lr_at(40) == 0.0  # past the end: clamped, never negative/complex


def test_matches_samed_loop_without_its_one_step_lag():
    base, wp, max_it = 0.005, 5, 30
    s = WarmupPoly(base, wp, max_it)
    # SAMed: lr for step 0 is base/wp; after step i it sets lr = f(i) for step i + 1.
    used = [base / wp]
    for i in range(max_it - 1):
        used.append(base * (i + 1) / wp if i < wp else base * (1.0 - (i - wp) / max_it) ** 0.9)
    for step in range(1, max_it):
        assert s.lr_at(step - 1) == pytest.approx(used[step], rel=1e-12)


def test_no_warmup():
    s = WarmupPoly(0.1, 0, 10, power=1.0)
    assert [round(s.lr_at(i), 10) for i in (0, 5)] == [0.1, 0.05]
