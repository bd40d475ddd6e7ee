"""Prompt simulation rules: points well inside, boxes of an exact IoU, seeding, tiny organs."""

from __future__ import annotations

import numpy as np
import pytest

from ragsam.baselines.prompts import (
    box_iou,
    depth_map,
    inner_points,
    jittered_box,
    make_prompt,
    prompt_rng,
    tight_box,
)
from ragsam.errors import InputError


def _square(size: int = 9, lo: int = 2, hi: int = 7) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[lo:hi, lo:hi] = True
    return mask


def _blob() -> np.ndarray:
    mask = np.zeros((64, 80), dtype=bool)
    mask[10:30, 20:50] = True
    mask[25:40, 40:60] = True  # an L-shaped organ
    return mask


def test_box_iou_hand_computed() -> None:
    # tight box 30 x 20 (area 600); shifted by 10 in x: intersection 20 x 20 = 400, union 800
    assert box_iou([20, 10, 50, 30], [30, 10, 60, 30]) == pytest.approx(0.5, abs=1e-12)
    # a box inside another of a quarter of its area
    assert box_iou([0, 0, 4, 4], [1, 1, 3, 3]) == pytest.approx(0.25, abs=1e-12)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0


def test_tight_box_covers_extreme_pixels() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[3, 4] = mask[6, 9] = True
    np.testing.assert_array_equal(tight_box(mask), [4, 3, 10, 7])


def test_depth_map_of_a_square_is_hand_computed() -> None:
    depth = depth_map(_square())
    # 5 x 5 square: outer ring 1, next ring 2, centre 3 (the image border counts as outside too)
    assert depth[4, 4] == 3.0 and depth[3, 4] == 2.0 and depth[2, 2] == 1.0 and depth[0, 0] == 0.0
    edge = np.ones((3, 3), dtype=bool)
    np.testing.assert_array_equal(depth_map(edge), [[1, 1, 1], [1, 2, 1], [1, 1, 1]])


def test_points_lie_well_inside() -> None:
    mask = _square()
    seen = set()
    for seed in range(200):
        pts = inner_points(mask, 1, np.random.default_rng(seed))
        assert pts.shape == (1, 2)
        seen.add(tuple(pts[0]))
    # depth >= max/2 = 1.5 keeps exactly the inner 3 x 3 pixels, and each of them is drawn
    assert seen == {(x, y) for x in range(3, 6) for y in range(3, 6)}


def test_three_points_distinct_inside_and_deep() -> None:
    mask = _blob()
    depth = depth_map(mask)
    for seed in range(20):
        pts = inner_points(mask, 3, np.random.default_rng(seed))
        assert pts.shape == (3, 2)
        assert len({tuple(p) for p in pts}) == 3
        assert mask[pts[:, 1], pts[:, 0]].all()
        assert (depth[pts[:, 1], pts[:, 0]] >= depth.max() / 2).all()


def test_points_fall_back_to_deepest_when_few_candidates() -> None:
    # 5 x 5 square: 9 candidates (inner 3 x 3); asking for 12 adds 3 depth-1 border pixels
    mask = _square()
    depth = depth_map(mask)
    pts = inner_points(mask, 12, np.random.default_rng(0))
    assert len({tuple(p) for p in pts}) == 12 and mask[pts[:, 1], pts[:, 0]].all()
    assert {tuple(p) for p in pts[:9]} == {(x, y) for x in range(3, 6) for y in range(3, 6)}
    assert (depth[pts[9:, 1], pts[9:, 0]] == 1.0).all()


@pytest.mark.parametrize("target", [0.5, 0.3, 0.8])
def test_box_iou_equals_target(target: float) -> None:
    mask = _blob()
    tight = tight_box(mask)
    np.testing.assert_array_equal(tight, [20, 10, 60, 40])
    boxes = []
    for seed in range(25):
        box = jittered_box(mask, target, np.random.default_rng(seed))
        # IoU recomputed independently from the rectangle overlap
        inter = max(0.0, min(box[2], 60) - max(box[0], 20)) * max(0.0, min(box[3], 40) - max(box[1], 10))
        union = (box[2] - box[0]) * (box[3] - box[1]) + 40 * 30 - inter
        assert inter / union == pytest.approx(target, abs=1e-6)
        assert box[0] < box[2] and box[1] < box[3]
        assert box.min() >= 0 and box[2] <= 80 and box[3] <= 64
        boxes.append(box)
    assert len({tuple(np.round(b, 6)) for b in boxes}) == 25  # jitter differs by seed


def test_box_iou_one_is_the_tight_box() -> None:
    mask = _blob()
    np.testing.assert_array_equal(jittered_box(mask, 1.0, np.random.default_rng(0)), tight_box(mask))


def test_box_for_organ_filling_the_image() -> None:
    mask = np.ones((16, 16), dtype=bool)
    for seed in range(10):
        box = jittered_box(mask, 0.5, np.random.default_rng(seed))
        assert box_iou([0, 0, 16, 16], box) == pytest.approx(0.5, abs=1e-6)
        assert box.min() >= 0 and box.max() <= 16


def test_one_pixel_organ() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[0, 7] = True  # in a corner: boxes are clipped
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(make_prompt("point1", mask, rng).points, [[7, 0]])
    np.testing.assert_array_equal(make_prompt("point3", mask, rng).points, [[7, 0]])  # all it has
    box = make_prompt("box", mask, rng).box
    assert box_iou([7, 0, 8, 1], box) == pytest.approx(0.5, abs=1e-6)
    assert box.min() >= 0 and box.max() <= 8
    two = np.zeros((8, 8), dtype=bool)
    two[4, 4:6] = True
    pts = make_prompt("point3", two, rng).points
    assert sorted(map(tuple, pts)) == [(4, 4), (5, 4)]


def test_seeding_is_reproducible_and_order_free() -> None:
    mask = _blob()

    def prompts(seed: int, organ: int) -> tuple:
        rng = prompt_rng(seed, "case_01", 7, organ)
        return (tuple(make_prompt("box", mask, rng).box), tuple(map(tuple, make_prompt("point3", mask, rng).points)))

    assert prompts(0, 1) == prompts(0, 1)
    assert prompts(0, 1) != prompts(1, 1)
    assert prompts(0, 1) != prompts(0, 2)
    a = prompt_rng(0, "case_01", 7, 1).uniform()
    assert a != prompt_rng(0, "case_02", 7, 1).uniform() and a == prompt_rng(0, "case_01", 7, 1).uniform()


def test_bad_inputs_are_refused() -> None:
    mask = _square()
    with pytest.raises(InputError, match="unknown prompt kind 'point2'"):
        make_prompt("point2", mask, np.random.default_rng(0))
    with pytest.raises(InputError, match="box IoU must be in"):
        jittered_box(mask, 1.5, np.random.default_rng(0))
    with pytest.raises(InputError, match="seed must be >= 0"):
        prompt_rng(-1, "c", 0, 1)
    with pytest.raises(ValueError, match="empty"):
        inner_points(np.zeros((4, 4), dtype=bool), 1, np.random.default_rng(0))
