"""SAM 2 memory-conditioned, prompt-free segmentation (ragsam.retrieval.sam2_memory).

The reference for the direct path is Meta's ``sam2`` video predictor
(``test_sam2_meta_parity.py``, full-size hiera-tiny). Here, on the fast tiny model,
transformers' video session checks the rest of the plumbing (memory selection,
pointer encodings, memory attention, decoder): with transformers' own choices where
they differ from Meta's (direct mask route, no hole filling, pointer from the best of
tokens 1-3), ragsam equals the session in which the supports are frames 0..k-1 of a
video with their masks added (frame by frame) and the query is frame k, tracked with
no input.
"""

from __future__ import annotations

import pytest
import torch
from meta_sam2 import tokens_1_to_3_pointer
from transformers import Sam2VideoInferenceSession
from transformers.models.sam2_video.processing_sam2_video import Sam2VideoProcessor
from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

import ragsam.retrieval.sam2_memory as sam2_memory
from ragsam.errors import InputError
from ragsam.models.sam2 import build_sam2
from ragsam.retrieval.sam2_memory import (
    Sam2MemorySegmenter,
    merge_organ_logits,
    preprocess_slices,
    resize_mask,
    upsample_logits,
)

S = 128  # tiny model input size


@pytest.fixture(scope="module")
def model():
    # one thread: the tiny model is faster that way, and CI's 2 cores are shared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield build_sam2("tiny", seed=4)[0]  # a seed whose merged labels hold background and both organs
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def case():
    """Query + 3 supports; organ 1 on supports 0, 1; organ 2 on supports 1, 2; organ 3 nowhere."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, S, S, generator=gen)
    labels = torch.zeros(3, S, S, dtype=torch.uint8)
    labels[0, 20:60, 30:70] = 1
    labels[1, 25:65, 35:80] = 1
    labels[1, 80:110, 80:120] = 2
    labels[2, 70:100, 60:100] = 2
    return images[3], images[:3], labels


def _processor() -> Sam2VideoProcessor:
    """The library's processor for its mask-input code path (its image / video sub-processors
    need torchvision, which ragsam does not depend on, so they are not built)."""
    processor = Sam2VideoProcessor.__new__(Sam2VideoProcessor)
    processor.target_size = S
    return processor


def _video_session_logits(model, query, support_images, support_labels, organs):
    """Low-res logits (K, S/4, S/4) of the query frame from the library's own video session."""
    processor = _processor()
    frames = preprocess_slices(torch.cat([support_images, query[None]]), S)  # (k+1, 3, S, S)
    session = Sam2VideoInferenceSession(video=frames, video_height=S, video_width=S, dtype=torch.float32)
    with torch.inference_mode():
        for t, lab in enumerate(support_labels):
            processor.add_inputs_to_inference_session(
                session, frame_idx=t, obj_ids=list(organs), input_masks=[(lab == o).numpy() for o in organs])
            model(inference_session=session, frame_idx=t)
        out = model(inference_session=session, frame_idx=len(support_labels))
    return out.pred_masks[:, 0], out.object_score_logits.reshape(-1)


def test_direct_path_with_transformers_choices_equals_video_session_propagation(model, case, monkeypatch):
    query, images, labels = case
    default = Sam2MemorySegmenter(model).segment_slice(query, images, labels)
    monkeypatch.setattr(sam2_memory, "mask_pointer", tokens_1_to_3_pointer)  # transformers' pointer
    seg = Sam2MemorySegmenter(model, mask_route="direct", fill_hole_area=0)
    pred = seg.segment_slice(query, images, labels)
    assert pred.organ_ids == [1, 2]
    ref_logits, ref_scores = _video_session_logits(model, query, images, labels, [1, 2])
    assert pred.low_res_logits.abs().max() > 1.0  # real masks, not the -1024 "no object" placeholder
    assert torch.allclose(pred.low_res_logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert torch.allclose(pred.object_scores, ref_scores, atol=1e-4)
    # labels from the library's logits, post-processed the same way, are identical
    ref_labels = merge_organ_logits(upsample_logits(ref_logits, S, (S, S)), [1, 2])
    assert torch.equal(pred.labels, ref_labels)
    assert set(pred.labels.unique().tolist()) == {0, 1, 2}
    # Meta's choices (the defaults) are a different computation
    assert (default.low_res_logits - ref_logits).abs().max() > 1e-2


def test_adding_all_masks_before_running_drops_the_later_ones(model, case):
    """The pitfall the direct path avoids: in the video session a mask input is consumed by the
    next forward call of its object; masks added on later frames first are then ignored."""
    query, images, labels = case
    processor = _processor()
    session = Sam2VideoInferenceSession(video=preprocess_slices(torch.cat([images, query[None]]), S),
                                        video_height=S, video_width=S, dtype=torch.float32)
    with torch.inference_mode():
        for t, lab in enumerate(labels):
            processor.add_inputs_to_inference_session(session, frame_idx=t, obj_ids=[1, 2],
                                                      input_masks=[(lab == o).numpy() for o in (1, 2)])
        for t in range(len(labels) + 1):
            out = model(inference_session=session, frame_idx=t)
    assert sorted(session.output_dict_per_obj[0]["cond_frame_outputs"]) == [0]  # frames 1, 2 were tracked
    right = Sam2MemorySegmenter(model).segment_slice(query, images, labels)
    assert (out.pred_masks[:, 0] - right.low_res_logits).abs().max() > 1e-2


def test_preprocessing_is_imagenet_normalisation_without_rescale(case):
    """[0, 1] slices: (x - mean) / std with the video processor's own constants, no 1/255."""
    query, _, _ = case
    ours = preprocess_slices(query[None], S)
    mean = torch.tensor(Sam2VideoVideoProcessor.image_mean).view(3, 1, 1)
    std = torch.tensor(Sam2VideoVideoProcessor.image_std).view(3, 1, 1)
    assert Sam2VideoVideoProcessor.do_rescale  # the processor would divide by 255: uint8 frames only
    assert torch.allclose(ours[0], (query[None] - mean) / std, atol=1e-6)
    # hand-computed: a pixel equal to the mean of channel 0 becomes 0; 1.0 in channel 2 -> (1-0.406)/0.225
    x = preprocess_slices(torch.full((1, 4, 4), 0.485), 4)
    assert x[0, 0].abs().max() < 1e-6
    assert preprocess_slices(torch.ones(1, 2, 2), 2)[0, 2, 0, 0].item() == pytest.approx(0.594 / 0.225, rel=1e-5)
    # other slice sizes are resized to the model input
    assert preprocess_slices(torch.rand(2, 3, 64, 64), S).shape == (2, 3, S, S)


def test_cached_supports_equal_uncached(model, case):
    query, images, labels = case
    seg = Sam2MemorySegmenter(model)
    uncached = seg.segment_slice(query, images, labels)
    # encode the supports once (one image-encoder pass each), reuse them for two queries
    memories = [seg.encode_support(img, lab, key=("case", z)) for z, (img, lab) in enumerate(zip(images, labels, strict=True))]
    query_features = seg.encode_images(query[None])[0]
    cached = seg.segment(query_features, memories, output_size=(S, S))
    again = seg.segment(query_features, memories, output_size=(S, S))
    # one batch of 4 vs batches of 1: the same on AVX-512 / SSE kernels, up to 1.5e-4 (logits up to 11.9) on
    # tools/cpu-isa.sh avx2, where MKL's products depend on the batch and bf16 memories amplify it (docs/testing.md)
    assert torch.allclose(cached.logits, uncached.logits, atol=1e-3)
    assert torch.equal(cached.labels, uncached.labels)
    assert torch.equal(again.logits, cached.logits)
    assert memories[2].key == ("case", 2) and sorted(memories[1].organs) == [1, 2]


def test_support_order_shared_positions_invariant_sequential_not(model, case):
    query, images, labels = case
    order = [2, 0, 1]
    shared = Sam2MemorySegmenter(model, pointer_positions="shared")
    a = shared.segment_slice(query, images, labels)
    b = shared.segment_slice(query, images[order], labels[order])
    assert torch.allclose(a.logits, b.logits, atol=1e-4)
    assert torch.equal(a.labels, b.labels)
    # with video semantics the object pointers carry the frame distance k - t: order matters
    seq = Sam2MemorySegmenter(model, pointer_positions="sequential")
    c = seq.segment_slice(query, images, labels)
    d = seq.segment_slice(query, images[order], labels[order])
    assert (c.low_res_logits - d.low_res_logits).abs().max() > 1e-2
    # ... and the spatial memories alone are order-invariant: same tokens, permuted
    mems = [seq.encode_support(i, lab) for i, lab in zip(images, labels, strict=True)]
    m1, p1, n1 = seq._memory_inputs(mems, 1)
    m2, p2, n2 = seq._memory_inputs([mems[i] for i in order], 1)
    spatial = (S // 16) ** 2
    perm = torch.cat([torch.arange(spatial) + spatial * i for i in order])
    assert n1 == n2 and torch.equal(m1[:-n1][perm], m2[:-n2]) and torch.allclose(p1[:-n1][perm], p2[:-n2])


def test_organ_absent_from_all_supports_is_not_predicted(model, case):
    query, images, labels = case
    seg = Sam2MemorySegmenter(model)
    pred = seg.segment_slice(query, images, labels, organs=[1, 2, 3])
    assert pred.organ_ids == [1, 2]
    assert pred.logits.shape == (2, S, S) and pred.probabilities.shape == (2, S, S)
    assert 3 not in pred.labels.unique().tolist()
    only_two = seg.segment_slice(query, images, labels, organs=[2])
    assert only_two.organ_ids == [2]
    assert torch.allclose(only_two.logits[0], pred.logits[1], atol=1e-5)
    nothing = seg.segment_slice(query, images, torch.zeros_like(labels))
    assert nothing.organ_ids == [] and nothing.labels.abs().sum() == 0
    with pytest.raises(InputError, match="at least one support"):
        seg.segment(query, [])


def test_empty_supports_option_changes_conditioning(model, case):
    query, images, labels = case
    with_empty = Sam2MemorySegmenter(model, use_empty_supports=True).segment_slice(query, images, labels)
    without = Sam2MemorySegmenter(model, use_empty_supports=False).segment_slice(query, images, labels)
    # organ 1 is absent from support 2: its "absent" memory is used only with use_empty_supports
    assert (with_empty.low_res_logits[0] - without.low_res_logits[0]).abs().max() > 1e-3
    # without them, a support that lacks the organ has no influence on it, whatever its image
    seg = Sam2MemorySegmenter(model, use_empty_supports=False)
    a = seg.segment_slice(query, images, labels, organs=[2])
    other = images.clone()
    other[0] = 1.0 - other[0]
    b = seg.segment_slice(query, other, labels, organs=[2])
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    c = Sam2MemorySegmenter(model).segment_slice(query, other, labels, organs=[2])
    assert (c.logits - with_empty.logits[1]).abs().max() > 1e-3


def test_merge_organ_logits_hand_computed():
    logits = torch.tensor([[[-1.0, 2.0], [0.5, -3.0]],
                           [[-2.0, 3.0], [0.2, -0.1]]])
    labels = merge_organ_logits(logits, [6, 1])
    assert labels.tolist() == [[0, 1], [6, 0]]
    assert merge_organ_logits(torch.zeros(0, 2, 2), []).tolist() == [[0, 0], [0, 0]]


def test_resize_mask_binarises_like_the_processor():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True
    small = resize_mask(mask, 2)
    assert small.tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]]
    same = resize_mask(mask, 4)
    assert torch.equal(same[0, 0], mask.float())
