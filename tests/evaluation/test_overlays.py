"""Overlays: stable colours, exact LPS reorientation, radiological placement in the PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ragsam.data.geometry import Geometry
from ragsam.data.volume import Volume
from ragsam.errors import OutputExistsError
from ragsam.evaluation.overlays import PALETTE, draw_overlay, label_colour, to_lps

# A NIfTI-style RAS grid: x index runs to patient RIGHT, y index to ANTERIOR (LPS directions -x, -y).
RAS = Geometry((12, 10, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))


def test_label_colours_are_fixed_by_id() -> None:
    assert label_colour(1) == (0xE6 / 255, 0x19 / 255, 0x4B / 255)
    assert label_colour(6) == pytest.approx((0x91 / 255, 0x1E / 255, 0xB4 / 255))
    assert label_colour(1 + len(PALETTE)) == label_colour(1)
    assert len({label_colour(i) for i in range(1, 14)}) == 13  # every BTCV organ distinct
    with pytest.raises(ValueError):
        label_colour(0)


def test_to_lps_flips_a_ras_volume_exactly() -> None:
    array = np.arange(6 * 10 * 12, dtype=np.int16).reshape(6, 10, 12)
    lps, spacing = to_lps(Volume(array, RAS, Path("ras.nii.gz")))
    assert spacing == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(lps, array[:, ::-1, ::-1])


def _colour_columns(png: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    """Column indices of the pixels of ``colour`` above the legend (bottom 20 % excluded)."""
    rgb = png[: int(png.shape[0] * 0.8), :, :3]
    hit = np.all(np.abs(rgb - np.asarray(colour)) < 0.02, axis=-1)
    return np.nonzero(hit)[1]


def test_overlay_is_radiological(tmp_path: Path) -> None:
    from matplotlib.image import imread

    gt = np.zeros((6, 10, 12), np.uint8)
    gt[1:5, 6:9, 8:11] = 1  # high x (RAS) = patient right; high y = anterior
    pred = np.zeros_like(gt)
    pred[1:5, 6:9, 1:4] = 3  # prediction puts organ 3 on the patient's LEFT
    path = draw_overlay(Volume(gt, RAS, Path("gt")), Volume(pred, RAS, Path("pred")),
                        {1: "spleen", 3: "left kidney"}, tmp_path / "case.png", title="case")
    png = imread(path)
    width = png.shape[1]
    right_organ = _colour_columns(png, label_colour(1))
    left_organ = _colour_columns(png, label_colour(3))
    assert right_organ.size > 100 and left_organ.size > 100
    # ground truth column (left half), organ on the patient's right -> viewer's left of its panel
    assert right_organ.max() < width / 2 and np.median(right_organ) < width / 4
    # prediction column (right half), organ on the patient's left -> viewer's right of its panel
    assert left_organ.min() > width / 2 and np.median(left_organ) > 3 * width / 4
    with pytest.raises(OutputExistsError):
        draw_overlay(Volume(gt, RAS, Path("gt")), Volume(pred, RAS, Path("pred")), {}, path, force=False)


def test_overlay_with_ct_underlay(tmp_path: Path) -> None:
    from matplotlib.image import imread

    labels = np.zeros((6, 10, 12), np.uint8)
    labels[2:4, 3:7, 3:7] = 6
    ct = np.full((6, 10, 12), 275.0, np.float32)  # top of the window: white
    volume = Volume(labels, RAS, Path("gt"))
    path = draw_overlay(volume, volume, {6: "liver"}, tmp_path / "ct.png",
                        image=Volume(ct, RAS, Path("ct")))
    png = imread(path)[:, :, :3]
    # liver blended at alpha 0.45 over white: 0.45 * colour + 0.55
    blended = 0.45 * np.asarray(label_colour(6)) + 0.55
    assert np.any(np.all(np.abs(png - blended) < 0.02, axis=-1))
