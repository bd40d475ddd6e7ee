"""Prompted SAM on slices: preprocessing, prompt frames, decoder batching, mask choice, overlaps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import SamModel

from ragsam.baselines.prompted import (
    PromptSettings,
    combine_organs,
    decode_organs,
    prompt_inputs,
    resolve_normalization,
    sam_pixel_values,
    segment_slices,
    slice_prompts,
    to_model_coords,
)
from ragsam.baselines.prompts import Prompt
from ragsam.errors import InputError
from ragsam.models.promptable_sam import load_prompt_sam


@pytest.fixture(scope="module")
def tiny() -> SamModel:
    torch.manual_seed(0)
    model, report = load_prompt_sam("tiny", "random", seed=0)
    assert report.image_size == 128
    return model


def _stack() -> tuple[np.ndarray, np.ndarray]:
    z, s = 5, 64
    labels = np.zeros((z, s, s), dtype=np.uint8)
    labels[1:4, 10:30, 10:30] = 1
    labels[2:4, 35:50, 30:60] = 2
    labels[2, 5, 5] = 3  # a one-pixel organ
    images = np.random.default_rng(0).random((z, s, s)).astype(np.float32)
    return images, labels


def test_pixel_values_hand_computed() -> None:
    images = torch.full((1, 4, 4), 0.5)
    sam = sam_pixel_values(images, 8, "sam")
    assert sam.shape == (1, 3, 8, 8)
    expected = [(127.5 - 123.675) / 58.395, (127.5 - 116.28) / 57.12, (127.5 - 103.53) / 57.375]
    np.testing.assert_allclose(sam[0, :, 3, 5].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(sam_pixel_values(images, 8, "unit").numpy(), 0.5)


def test_prompt_coordinates_land_on_the_same_relative_position() -> None:
    # slice pixel 10 (edge units) at S=64 is 20 px into a 128 model input; the encoder adds 0.5
    assert to_model_coords(np.array([10.0]), 64, 128)[0] == pytest.approx(19.5)
    p = np.array([3.25, 40.0, 64.0])
    np.testing.assert_allclose((to_model_coords(p, 64, 1024) + 0.5) / 1024, p / 64)


def test_points_are_padded_with_not_a_point() -> None:
    prompts = [Prompt("point3", points=np.array([[1, 2], [3, 4], [5, 6]])), Prompt("point3", points=np.array([[7, 0]]))]
    inputs = prompt_inputs(prompts, 8, 128, torch.device("cpu"))
    assert inputs["input_points"].shape == (1, 2, 3, 2)
    np.testing.assert_array_equal(inputs["input_labels"][0].numpy(), [[1, 1, 1], [1, -1, -1]])
    # pixel (7, 0) centre (7.5, 0.5) * 16 - 0.5
    np.testing.assert_allclose(inputs["input_points"][0, 1, 0].numpy(), [119.5, 7.5])
    boxes = prompt_inputs([Prompt("box", box=np.array([0.0, 1.0, 4.0, 8.0]))], 8, 128, torch.device("cpu"))
    np.testing.assert_allclose(boxes["input_boxes"][0, 0].numpy(), [-0.5, 15.5, 63.5, 127.5])


def test_combine_organs_highest_positive_logit_wins() -> None:
    logits = torch.tensor([[[1.0, -1.0, 2.0, -0.5]], [[0.5, 3.0, -1.0, -0.1]]])  # (K=2, 1, 4)
    np.testing.assert_array_equal(combine_organs(logits, [5, 7]).numpy(), [[5, 7, 5, 0]])


@pytest.mark.parametrize("kind", ["point1", "point3", "box"])
def test_batched_decoder_equals_one_call_per_organ(tiny: SamModel, kind: str) -> None:
    images, labels = _stack()
    prompts = slice_prompts(labels[2], [1, 2, 3], PromptSettings(kind=kind, seed=4), "c", 2)
    assert list(prompts) == [1, 2, 3]
    pixels = sam_pixel_values(torch.from_numpy(images[2:3]), 128)
    emb = tiny.get_image_embeddings(pixels)
    batched = decode_organs(tiny, emb, list(prompts.values()), 64)
    assert batched.shape == (3, 64, 64)
    if kind == "point3":  # organ 3 (1 pixel) is padded to 3 points in the batch, 1 alone: not comparable
        organs = [1, 2]
    else:
        organs = [1, 2, 3]
    for i, organ in enumerate(organs):
        single = decode_organs(tiny, emb, [prompts[organ]], 64)
        torch.testing.assert_close(batched[i], single[0], atol=1e-4, rtol=1e-4)


def test_single_point_keeps_the_most_confident_multimask_output(tiny: SamModel) -> None:
    images, labels = _stack()
    prompt = slice_prompts(labels[2], [2], PromptSettings(kind="point1"), "c", 2)[2]
    emb = tiny.get_image_embeddings(sam_pixel_values(torch.from_numpy(images[2:3]), 128))
    chosen = decode_organs(tiny, emb, [prompt], 64)[0]
    with torch.no_grad():
        out = tiny(image_embeddings=emb, multimask_output=True, **prompt_inputs([prompt], 64, 128, emb.device))
    best = int(out.iou_scores[0, 0].argmax())
    low = out.pred_masks[0, 0, best][None, None]
    up = torch.nn.functional.interpolate(low, size=(128, 128), mode="bilinear", align_corners=False)
    up = torch.nn.functional.interpolate(up, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(chosen, up[0, 0])
    assert out.pred_masks.shape[2] == 3  # three candidates to choose from


def test_segment_slices_only_where_prompted_and_reproducible(tiny: SamModel) -> None:
    images, labels = _stack()
    done: list[int] = []
    pred, n = segment_slices(tiny, images, labels, [1, 2, 3], PromptSettings(kind="box", seed=1), "c",
                             embed_batch=2, progress=done.append)
    assert n == 3 + 2 + 1  # organ 1 on 3 slices, organ 2 on 2, organ 3 on 1
    assert done == [2, 3]  # 3 slices with organs, embedded 2 at a time
    assert pred.dtype == np.uint8 and pred.shape == labels.shape
    assert not pred[0].any() and not pred[4].any()  # no organ in the ground truth -> never prompted
    for organ in (1, 2, 3):
        gt_slices = set(np.nonzero(labels == organ)[0])
        assert set(np.nonzero(pred == organ)[0]) <= gt_slices
    again, _ = segment_slices(tiny, images, labels, [1, 2, 3], PromptSettings(kind="box", seed=1), "c")
    np.testing.assert_array_equal(pred, again)
    # an organ left out of organ_ids is never prompted
    only1, n1 = segment_slices(tiny, images, labels, [1], PromptSettings(kind="box", seed=1), "c")
    assert n1 == 3 and set(np.unique(only1)) <= {0, 1}


def test_normalization_rules(tmp_path: Path) -> None:
    assert resolve_normalization("random") == "sam"
    assert resolve_normalization("facebook/sam-vit-base") == "sam"
    assert resolve_normalization("flaviagiammarino/medsam-vit-base") == "unit"
    assert resolve_normalization("/ckpt/medsam_vit_b.pth") == "unit"
    assert resolve_normalization("/ckpt/medsam_vit_b.pth", "sam") == "sam"
    assert resolve_normalization("wanglab/medsam-vit-base") == "unit"  # the name wins over a port's config
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False, "image_mean": [0, 0, 0]}))
    assert resolve_normalization(str(folder)) == "unit"
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True,
                                                                  "image_mean": [0.485, 0.456, 0.406]}))
    assert resolve_normalization(str(folder)) == "sam"
    with pytest.raises(InputError, match="unknown normalisation 'zscore'"):
        resolve_normalization("random", "zscore")


def test_prompt_settings_refuse_bad_values() -> None:
    with pytest.raises(InputError, match="unknown prompt kind 'scribble'"):
        PromptSettings(kind="scribble")
    with pytest.raises(InputError, match="box IoU must be in"):
        PromptSettings(box_iou=0.0)
