"""ragsam's SAM 2 memory path against Meta's own ``sam2`` 1.1.0 video predictor (the reference).

Official-format SAM 2.1 hiera-tiny weights (random, seeded, every tensor perturbed: see
``meta_sam2.perturb``) are loaded by Meta's code as built by ``build_sam2_video_predictor``
(``fill_hole_area=8``) and by ragsam's converter (``build_sam2`` on the ``.pt``). Meta: supports
are frames ``0..k-1`` given masks with ``add_new_mask``, the query is frame ``k``, reached by
``propagate_in_video``; ragsam: ``Sam2MemorySegmenter`` with its defaults. Compared: the query's
low-res logits (``I/4`` px, before any resizing) and object scores, per organ.

Tolerance: measured max |d| over seeds 0-2 and ``ATEN_CPU_CAPABILITY=default`` / ``avx2``
(``python tests/retrieval/meta_sam2.py``; see docs/paper-fidelity.md) was at most 4.5e-7
(``SPREAD`` rounds it up); ``TOL`` is 100x that (memory is stored in bfloat16: a rounding flip on
another CPU must not fail the test), and the pointer-token and hole-filling causes of issue 21
each move the logits by more than ``10 * TOL`` (measured 0.24 and 0.43).
"""

from __future__ import annotations

import pytest
import torch
from meta_sam2 import (
    connected_components,
    memoise_image_encoder,
    meta_query_logits,
    official_weights,
    parity_case,
    tokens_1_to_3_pointer,
)

import ragsam.retrieval.sam2_memory as sam2_memory
from ragsam.models.sam2 import build_sam2
from ragsam.retrieval.sam2_mask_route import (
    default_fill_hole_area,
    default_mask_route,
    fill_holes,
    memory_masks,
)
from ragsam.retrieval.sam2_memory import ObjectMemory, Sam2MemorySegmenter, preprocess_slices, resize_mask

SPREAD = 1e-6  # measured, see the module docstring
TOL = 100 * SPREAD
CASES = {"k1": [3], "k2": [2, 3], "k4": [0, 1, 2, 3]}  # support frames; organ 2 is empty on 0 and 2
ORGANS = [1, 2]


def parity_model_stub(image_size: int):
    """Just enough of a model for Sam2MemorySegmenter's constructor."""
    model = torch.nn.Linear(1, 1)
    model.config = type("Config", (), {"image_size": image_size})()
    return model


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    predictor, path = official_weights(0, tmp_path_factory.mktemp("sam2-official"))
    memoise_image_encoder(predictor)
    model = build_sam2(str(path))[0]
    frames, labels = parity_case()
    pixels = preprocess_slices(frames, int(model.config.image_size))
    seg = Sam2MemorySegmenter(model)
    features = seg.encode_pixels(pixels)
    meta: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def meta_logits(case: str) -> torch.Tensor:
        if case not in meta:
            support = CASES[case]
            masks = [[labels[t] == o for t in support] for o in ORGANS]
            with pytest.MonkeyPatch.context() as mp:
                meta[case] = meta_query_logits(predictor, pixels[[*support, 4]], masks, mp)
        return meta[case]

    def ragsam(case: str, seg: Sam2MemorySegmenter = seg):
        supports = [seg.encode_support(features[t], labels[t]) for t in CASES[case]]
        return seg.segment(features[4], supports, organs=ORGANS)

    return {"model": model, "meta": meta_logits, "ragsam": ragsam, "features": features, "labels": labels}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_query_logits_equal_metas_video_predictor(parity, case):
    ref = parity["meta"](case)
    pred = parity["ragsam"](case)
    assert pred.organ_ids == ORGANS
    assert ref.shape == pred.low_res_logits.shape == (2, 256, 256)
    assert (ref > 0).any() and (ref <= 0).any()  # real masks, not the -1024 "no object" placeholder
    assert (pred.low_res_logits - ref).abs().max() < TOL


@pytest.mark.slow
def test_the_memory_moves_the_logits(parity):
    """The weights are such that the memory matters: a second support, or zeroing the memory, moves
    the query's logits by at least 0.1 (else the comparison above would prove little)."""
    assert (parity["meta"]("k1")[0] - parity["meta"]("k2")[0]).abs().max() >= 0.1
    seg = Sam2MemorySegmenter(parity["model"])
    support = seg.encode_support(parity["features"][3], parity["labels"][3])
    normal = seg.segment(parity["features"][4], [support], organs=[1]).low_res_logits
    mem = support.organs[1]
    support.organs[1] = ObjectMemory(torch.zeros_like(mem.features), torch.zeros_like(mem.pointer), True)
    zeroed = seg.segment(parity["features"][4], [support], organs=[1]).low_res_logits
    assert (normal - zeroed).abs().max() >= 0.1


@pytest.mark.slow
def test_each_cause_of_the_old_gap_is_detected(parity, monkeypatch):
    """Issue 21's differences: the pointer token and hole filling each move the logits far beyond
    the tolerance. The direct mask route changes the memory encoder's input on every support (the
    edges of the masks, and the filled hole), but with these weights moves the logits by only
    ~1e-5 (measured 1.35e-5): it is checked on the memory masks and memory features."""
    model = parity["model"]
    ref = parity["meta"]("k2")
    unfilled = parity["ragsam"]("k2", Sam2MemorySegmenter(model, fill_hole_area=0))
    meta_seg, direct_seg = Sam2MemorySegmenter(model), Sam2MemorySegmenter(model, mask_route="direct")
    for t in CASES["k2"]:
        mask = resize_mask(parity["labels"][t] == 1, 1024)
        routes = [(memory_masks(mask, route, 8) > 0) for route in ("meta", "direct")]
        assert (routes[0] != routes[1]).sum() >= 50
        feats = [s.encode_support(parity["features"][t], parity["labels"][t]).organs[1].features
                 for s in (meta_seg, direct_seg)]
        assert not torch.equal(feats[0], feats[1])
    monkeypatch.setattr(sam2_memory, "mask_pointer", tokens_1_to_3_pointer)
    tokens = parity["ragsam"]("k2")
    for name, pred in (("no hole filling", unfilled), ("pointer tokens 1-3", tokens)):
        assert (pred.low_res_logits - ref).abs().max() > 10 * TOL, name


def test_defaults_are_metas_at_1024_px():
    assert [default_fill_hole_area(s) for s in (64, 362, 363, 512, 1024)] == [0, 0, 1, 2, 8]
    assert [default_mask_route(s) for s in (64, 511, 512, 1024)] == ["direct", "direct", "meta", "meta"]
    seg = Sam2MemorySegmenter(parity_model_stub(1024))
    assert (seg.fill_hole_area, seg.mask_route, seg.pointer_positions, seg.use_empty_supports) == (8, "meta",
                                                                                                  "sequential", True)
    tiny = Sam2MemorySegmenter(parity_model_stub(64))
    assert (tiny.fill_hole_area, tiny.mask_route) == (0, "direct")


def test_fill_holes_hand_computed():
    x = torch.full((6, 6), 2.0)
    x[1, 1] = x[2, 2] = -1.0  # diagonal neighbours: one 8-connected hole of area 2
    x[4:6, 0:5] = -3.0  # a border region of area 10
    filled = fill_holes(x, 8)
    assert filled[1, 1] == filled[2, 2] == pytest.approx(0.1)
    assert torch.equal(filled[4:6, 0:5], x[4:6, 0:5])
    assert torch.equal(fill_holes(x, 0), x)
    assert torch.equal(fill_holes(x, 10)[4:6, 0:5], torch.full((2, 5), 0.1))


def test_fill_holes_equals_metas_fill_holes_in_mask_scores(monkeypatch):
    """Meta's function, with its CUDA labelling replaced by an independent pure-torch one."""
    import sam2.utils.misc as misc

    monkeypatch.setattr(misc, "get_connected_components", connected_components)
    gen = torch.Generator().manual_seed(3)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(3, 1, 68, 68, generator=gen), 5, 1)  # blobs
    logits = smooth + 0.3 * torch.randn(3, 1, 64, 64, generator=gen)  # and speckle
    for area in (1, 8, 30):
        ours, meta = fill_holes(logits, area), misc.fill_holes_in_mask_scores(logits, area)
        assert torch.equal(ours, meta)
        assert (ours != logits).sum() > 0
