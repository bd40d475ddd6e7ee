"""Volumes <-> canonical slices: windowing values, LPS reorientation, exact label round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ragsam.data.geometry import Geometry
from ragsam.data.phantom import make_phantom
from ragsam.data.slices import (
    SliceGrid,
    SliceSettings,
    canonical_axes,
    slices_to_volume,
    to_canonical,
    volume_to_slices,
    window_hu,
)
from ragsam.data.volume import Volume, from_sitk, to_sitk
from ragsam.errors import InputError

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
LIVER, SPLEEN = 6, 1


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((10, 40, 48), (5.0, 3.0, 2.5), seed=2)


def _reoriented(volume: Volume, code: str) -> Volume:
    """The same physical voxels stored with another axis orientation (like a file would)."""
    return from_sitk(sitk.DICOMOrient(to_sitk(volume), code), volume.path)


def _volume(array: np.ndarray, direction=IDENTITY) -> Volume:
    size = tuple(reversed(array.shape))
    return Volume(array, Geometry(size, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction), Path("hand.nii.gz"))


def test_window_hand_computed_2x2():
    # (-125, 275): width 400 HU; 0 HU -> 125/400, 75 HU -> 0.5, clipped at both ends
    hu = np.array([[[-1000.0, 0.0], [75.0, 500.0]]], dtype=np.float32)
    expected = np.array([[0.0, 0.3125], [0.5, 1.0]], dtype=np.float32)
    assert np.array_equal(window_hu(hu, (-125.0, 275.0))[0], expected)
    stack = volume_to_slices(_volume(hu), None, SliceSettings(size=2))
    assert stack.images.dtype == np.float32 and stack.images.shape == (1, 2, 2)
    assert np.array_equal(stack.images[0], expected) and stack.labels is None
    # stored right-to-left and posterior-to-anterior (RAS): canonical LPS flips both axes
    ras = volume_to_slices(_volume(hu, (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)), None, SliceSettings(size=2))
    assert np.array_equal(ras.images[0], expected[::-1, ::-1])
    assert ras.grid.orientation == "RAS" and ras.grid.flips == (True, True, False)


def test_bilinear_upsampling_values():
    # 1 x 2 slice [0, 1] -> 4 x 4: align_corners=False gives columns 0, .25, .75, 1
    hu = np.array([[[-125.0, 275.0]]], dtype=np.float32)
    stack = volume_to_slices(_volume(hu), None, SliceSettings(size=4))
    assert np.allclose(stack.images[0], np.tile([0.0, 0.25, 0.75, 1.0], (4, 1)), atol=1e-6)


@pytest.mark.parametrize("code", ["LPS", "LAS", "RAS", "RPI", "SLP", "PIR"])
def test_canonical_orientation_recovers_lps_phantom(phantom, code):
    image, labels = phantom  # built in LPS
    img_o, lab_o = _reoriented(image, code), _reoriented(labels, code)
    stack = volume_to_slices(img_o, lab_o, SliceSettings(size=48))
    assert stack.grid.orientation == code and stack.grid.canonical_shape == (10, 40, 48)
    lps = volume_to_slices(image, labels, SliceSettings(size=48))
    assert np.array_equal(stack.labels, lps.labels)
    assert np.array_equal(stack.images, lps.images)
    # the numpy reorientation is exactly what SimpleITK's DICOMOrient does to the whole image
    axes, flips, _ = canonical_axes(img_o.geometry.direction)
    assert stack.grid.axes == axes and stack.grid.flips == flips
    turned = from_sitk(sitk.DICOMOrient(to_sitk(lab_o), "LPS"), lab_o.path)
    assert np.array_equal(to_canonical(lab_o.array, axes, flips), turned.array)
    assert turned.geometry.spacing == stack.grid.canonical_spacing
    # ... and the way back lands on the original file grid exactly
    assert np.array_equal(slices_to_volume(stack.labels, stack.grid), lab_o.array)


@pytest.mark.parametrize("size", [48, 64, 77, 96])
def test_label_round_trip_exact_when_size_at_least_in_plane(phantom, size):
    _, labels = phantom
    for code in ("LPS", "LAS", "RAS"):  # identity, flipped y (as the DICOM case), RAS (NIfTI-style)
        lab_o = _reoriented(labels, code)
        stack = volume_to_slices(_reoriented(phantom[0], code), lab_o, SliceSettings(size=size))
        assert stack.labels.shape == (10, size, size) and stack.labels.dtype == np.uint8
        back = slices_to_volume(stack.labels, stack.grid)
        assert back.shape == lab_o.array.shape and np.array_equal(back, lab_o.array)


def test_small_size_loses_detail_but_reslicing_is_exact(phantom):
    image, labels = phantom
    settings = SliceSettings(size=24)  # below the 40 x 48 in-plane size
    stack = volume_to_slices(image, labels, settings)
    back = slices_to_volume(stack.labels, stack.grid)
    assert back.shape == labels.array.shape
    agree = float((back == labels.array).mean())
    assert 0.9 < agree < 1.0  # down-sampling is lossy ...
    again = volume_to_slices(image, Volume(back, labels.geometry, labels.path), settings)
    assert np.array_equal(again.labels, stack.labels)  # ... but slicing the result again is exact


def test_probabilities_hand_computed():
    grid = volume_to_slices(_volume(np.zeros((1, 4, 4), np.float32)), None, SliceSettings(size=2)).grid
    p1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    probs = torch.stack([1 - p1, p1])[None]  # (Z=1, C=2, 2, 2)
    # bilinear 2 -> 4 (align_corners=False): class 1 is 1, .75, .25, 0 along rows/columns,
    # so it wins (> 0.5) exactly on the top-left 2 x 2 block
    expected = np.zeros((1, 4, 4), np.uint8)
    expected[0, :2, :2] = 1
    assert np.array_equal(slices_to_volume(probs, grid), expected)
    assert np.array_equal(slices_to_volume(probs.numpy(), grid), expected)


def test_one_hot_probabilities_at_twice_the_size_are_exact(phantom):
    _, labels = phantom
    lab_o = _reoriented(labels, "RAS")
    stack = volume_to_slices(_reoriented(phantom[0], "RAS"), lab_o, SliceSettings(size=96))
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(stack.labels).long(), 12).permute(0, 3, 1, 2).float()
    assert np.array_equal(slices_to_volume(one_hot * 5.0 - 2.0, stack.grid), lab_o.array)  # logits too


def test_grid_json_round_trip_and_shape_checks(phantom, tmp_path):
    stack = volume_to_slices(*phantom, SliceSettings(size=32, context=1))
    grid = SliceGrid.from_json(json.loads(json.dumps(stack.grid.to_json())))
    assert grid == stack.grid
    # grid.json: the one reader, versioned (none recorded = 1), refusing newer and malformed files
    case = tmp_path / "case"
    case.mkdir()
    (case / "grid.json").write_text(json.dumps(stack.grid.to_json()))
    assert SliceGrid.read(case) == stack.grid
    (case / "grid.json").write_text(json.dumps({**stack.grid.to_json(), "format_version": 2}))
    with pytest.raises(InputError, match="format version 2 is written by a newer ragsam"):
        SliceGrid.read(case)
    (case / "grid.json").write_text(json.dumps({"size": 32}))
    with pytest.raises(InputError, match="malformed slice grid"):
        SliceGrid.read(case)
    with pytest.raises(ValueError, match="Z=10"):
        slices_to_volume(np.zeros((9, 32, 32), np.uint8), grid)
    # 2.5D model input: neighbours clamped at the volume ends
    x = stack.model_input(0)
    assert x.shape == (3, 32, 32)
    assert np.array_equal(x[0], stack.images[0]) and np.array_equal(x[2], stack.images[1])
    assert stack.model_input().shape == (10, 3, 32, 32)


@pytest.mark.parametrize("context", [0, 1, 2])
def test_chunked_model_inputs_equal_the_per_slice_inputs(phantom, context):
    stack = volume_to_slices(phantom[0], None, SliceSettings(size=16, context=context))
    per_slice = np.stack([stack.model_input(z, channels=3) for z in range(10)])
    assert per_slice.shape == (10, 2 * context + 1 if context else 3, 16, 16)
    for start, stop in [(0, 10), (0, 3), (3, 6), (8, 12)]:  # chunks, and one running past the end
        chunk = stack.model_inputs(start, stop, channels=3)
        assert chunk.dtype == np.float32 and np.array_equal(chunk, per_slice[start:min(stop, 10)])
    if context == 1:  # the clamped neighbours of the last slice, by hand
        last = stack.model_inputs(9, 10)[0]
        assert [np.array_equal(last[i], stack.images[z]) for i, z in enumerate((8, 9, 9))] == [True] * 3


@pytest.mark.parametrize("code", ["LPS", "RAS", "PIR", "SLP"])
@pytest.mark.parametrize(("size", "context"), [(48, 0), (32, 1), (77, 2)])
def test_lazy_slices_equal_the_sliced_volume(phantom, code, size, context):
    from ragsam.data.slices import lazy_slices

    image = _reoriented(phantom[0], code)
    settings = SliceSettings(size=size, context=context)
    stack, lazy = volume_to_slices(image, None, settings), lazy_slices(image, settings)
    assert lazy.grid == stack.grid and lazy.canon_hu.base is not None  # a view of the image, not a copy
    whole = stack.model_inputs(0, 10)
    for start, stop in [(0, 10), (0, 1), (2, 5), (9, 10), (7, 12)]:
        assert np.array_equal(lazy.model_inputs(start, stop), whole[start:min(stop, 10)])


def test_scores_to_labels_per_chunk_equals_the_whole_volume():
    from ragsam.data.slices import scores_to_labels

    scores = torch.rand(5, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    whole = scores_to_labels(scores, (9, 7), chunk=5)
    assert whole.dtype == torch.uint8 and whole.shape == (5, 9, 7)
    parts = torch.cat([scores_to_labels(scores[i:i + 2], (9, 7)) for i in range(0, 5, 2)])
    assert torch.equal(parts, whole)
    resized = torch.nn.functional.interpolate(scores, size=(9, 7), mode="bilinear", align_corners=False,
                                              antialias=False)
    assert torch.equal(whole.long(), resized.argmax(1))
    assert scores_to_labels(scores[:0], (9, 7)).shape == (0, 9, 7)


def test_labels_on_another_physical_grid_refused(phantom):
    image, labels = phantom
    g = labels.geometry
    shifted = Volume(labels.array, Geometry(g.size, g.spacing, (g.origin[0] + 7.0, *g.origin[1:]), g.direction),
                     Path("shifted.nii.gz"))
    with pytest.raises(InputError, match="shifted.nii.gz"):
        volume_to_slices(image, shifted)
    big = Volume(labels.array.astype(np.int16) * 40, g, Path("big.nii.gz"))
    with pytest.raises(InputError, match="big.nii.gz.*440"):
        volume_to_slices(image, big)


def test_shared_3mm_case_round_trip_and_anatomy(ct3mm):
    from ragsam.data.volume import read_image, read_labels

    image = read_image(ct3mm["image"])
    labels = read_labels(ct3mm["labels"], image)
    stack = volume_to_slices(image, labels, SliceSettings(size=128))  # >= 122 x 101 in-plane
    assert stack.grid.orientation == "RAS" and stack.images.shape == (30, 128, 128)
    assert stack.images.min() >= 0.0 and stack.images.max() <= 1.0
    assert np.array_equal(slices_to_volume(stack.labels, stack.grid), labels.array)
    # canonical LPS: the liver lies on the patient's right (low columns), the spleen left
    cols = np.arange(128)[None, None, :]
    liver_col = float((cols * (stack.labels == LIVER)).sum() / (stack.labels == LIVER).sum())
    spleen_col = float((cols * (stack.labels == SPLEEN)).sum() / (stack.labels == SPLEEN).sum())
    assert liver_col < 64 < spleen_col


def test_shared_dicom_case_with_flipped_label_file(ct_dicom):
    from ragsam.data.volume import read_image, read_labels

    image = read_image(ct_dicom["image"])  # LPS series
    raw_labels = read_labels(ct_dicom["labels"])  # stored with the y axis flipped (LAS)
    assert raw_labels.geometry.direction[4] == -1.0
    stack = volume_to_slices(image, raw_labels, SliceSettings(size=512))  # paired by physical position
    paired = read_labels(ct_dicom["labels"], image)
    assert np.array_equal(stack.labels, volume_to_slices(image, paired, SliceSettings(size=512)).labels)
    assert not np.array_equal(stack.labels, raw_labels.array)  # index pairing would differ
    assert np.array_equal(slices_to_volume(stack.labels, stack.grid), paired.array)
    cols = np.arange(512)[None, None, :]
    liver_col = float((cols * (stack.labels == LIVER)).sum() / (stack.labels == LIVER).sum())
    spleen_col = float((cols * (stack.labels == SPLEEN)).sum() / (stack.labels == SPLEEN).sum())
    assert liver_col < 256 < spleen_col  # measured: 177.7 and 352.3
