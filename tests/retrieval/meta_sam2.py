"""Meta's own ``sam2`` 1.1.0 video predictor as the reference for ragsam's SAM 2 memory path.

Installed by the Makefile's install recipe (``pip install --no-deps sam2==1.1.0`` with
``SAM2_BUILD_CUDA=0``, plus its pure-Python dependencies hydra-core and iopath). The video
predictor imports neither torchvision nor Meta's CUDA extension; only the image predictor does.

* :func:`official_weights`: a ``SAM2VideoPredictor`` built from Meta's own
  ``sam2.1_hiera_t.yaml`` with Meta's post-processing (``fill_hole_area=8``), random seeded
  weights, every tensor perturbed (``perturb``) so that the memory moves the output; and the same
  weights as an official ``{"model": state_dict}`` ``.pt`` file.
* :func:`meta_query_logits`: supports as frames ``0..k-1`` given masks with ``add_new_mask``, the
  query as frame ``k``, ``propagate_in_video``; the query's stored low-res logits per object.
* :func:`connected_components`: a pure-torch stand-in for Meta's CUDA ``get_connected_componnets``
  (8-connectivity, per-pixel component areas), so Meta's hole filling runs on a CPU; it is written
  independently of ragsam's SciPy labelling.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OBJECT_SCORE_BIAS = 4.0  # the object-score head's last bias: objects predicted present
POINTER_GAIN = 3.0  # object pointers strong enough to matter in memory attention


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Add seeded Gaussian noise to every floating tensor: ``t += scale * (std(t) + 0.02) * N(0, 1)``.

    Meta's random init leaves layer scales at 1e-6 and several embeddings at 0, which makes the
    memory almost irrelevant; after this every tensor matters. The object-pointer projection is
    then scaled by ``POINTER_GAIN`` (pointer tokens 1-3 instead of 0 then move the query's logits by
    0.24 instead of 5e-6) and the object-score head's output bias set to ``OBJECT_SCORE_BIAS`` so the
    decoder predicts objects present.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                std = float(t.float().std()) if t.numel() > 1 else 0.0
                t.add_(torch.randn(t.shape, generator=gen) * scale * (std + 0.02))
        for layer in model.obj_ptr_proj.layers:
            layer.weight.mul_(POINTER_GAIN)
            layer.bias.mul_(POINTER_GAIN)
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(OBJECT_SCORE_BIAS)


def official_weights(seed: int, folder: Path):
    """``(Meta's SAM2VideoPredictor in eval mode, path of the same weights as an official .pt)``."""
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(seed)
    predictor = build_sam2_video_predictor(CONFIG, ckpt_path=None, device="cpu")
    perturb(predictor, seed)
    predictor.eval()
    path = folder / f"sam2.1_hiera_tiny_seed{seed}.pt"
    torch.save({"model": predictor.state_dict()}, path)
    return predictor, path


def connected_components(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Meta's ``get_connected_components`` contract: ``(N, 1, H, W)`` binary -> (labels, areas).

    Labels: 8-connected components of the non-zero pixels (minimum pixel index + 1 of the
    component, 0 elsewhere), found by repeated 3x3 min-propagation until nothing changes; areas:
    each pixel's component size (0 on zero pixels).
    """
    fg = mask.to(torch.bool)
    n, _, h, w = fg.shape
    big = float(h * w + 1)
    ids = torch.arange(1, h * w + 1, dtype=torch.float64).view(1, 1, h, w).expand(n, 1, h, w)
    labels = torch.where(fg, ids, torch.full_like(ids, big))
    while True:
        spread = -F.max_pool2d(-labels, kernel_size=3, stride=1, padding=1)
        new = torch.where(fg, torch.minimum(labels, spread), labels)
        if torch.equal(new, labels):
            break
        labels = new
    labels = torch.where(fg, labels, torch.zeros_like(labels)).long()
    areas = torch.zeros_like(labels)
    for i in range(n):
        counts = torch.bincount(labels[i].flatten(), minlength=h * w + 1)
        areas[i] = torch.where(fg[i], counts[labels[i]], torch.zeros_like(labels[i]))
    return labels.int(), areas.int()


def meta_query_logits(predictor, pixels: Tensor, masks: Sequence[Sequence[Tensor]], monkeypatch) -> Tensor:
    """Low-res logits ``(K, I/4, I/4)`` of the last frame, tracked by Meta's video predictor.

    Args:
        predictor: from :func:`official_weights`.
        pixels: ``(k+1, 3, I, I)`` normalised frames (supports, then the query).
        masks: ``masks[o][t]``: ``(S, S)`` bool mask of object ``o`` on support ``t`` (empty allowed).
        monkeypatch: pytest's fixture (frame loading and the CUDA components kernel are replaced).
    """
    import sam2.sam2_video_predictor as video
    import sam2.utils.misc as misc

    size = masks[0][0].shape
    monkeypatch.setattr(video, "load_video_frames", lambda **kw: (pixels, size[0], size[1]))
    calls = []

    def components(mask: Tensor) -> tuple[Tensor, Tensor]:
        calls.append(mask.shape)
        return connected_components(mask)

    monkeypatch.setattr(misc, "get_connected_components", components)
    k = pixels.shape[0] - 1
    with torch.inference_mode():
        state = predictor.init_state(video_path="(frames given in memory)")
        for o, per_frame in enumerate(masks):
            for t, m in enumerate(per_frame):
                predictor.add_new_mask(state, frame_idx=t, obj_id=o, mask=m)
        for _ in predictor.propagate_in_video(state):
            pass
    assert calls, "Meta's hole filling did not run"
    return torch.cat([state["output_dict_per_obj"][o]["non_cond_frame_outputs"][k]["pred_masks"][:, 0]
                      for o in range(len(masks))])


def memoise_image_encoder(predictor) -> None:
    """Meta's video predictor re-runs the image encoder whenever it revisits a frame (it caches one);
    the features of a frame never change, so they are computed once per frame content here."""
    original, cache = predictor.forward_image, {}

    def forward_image(image: Tensor):
        key = (tuple(image.shape), tuple(image.flatten()[::4099].tolist()))
        if key not in cache:
            cache[key] = original(image)
        return cache[key]

    predictor.forward_image = forward_image


def parity_case(size: int = 512, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Frames ``(5, S, S)`` in [0, 1] (4 supports, then the query) and support labels ``(4, S, S)``.

    Organ 1 is on every support, with a hole of ``S/128`` px square (2 x 2 = 4 low-res pixels
    at 1024 px input: filled by ``fill_hole_area=8``) and one of ``3 S/64`` px (144 low-res pixels:
    kept); organ 2 is on supports 1 and 3 only (supports 0 and 2 give it an empty mask).
    """
    gen = torch.Generator().manual_seed(seed)
    frames = torch.rand(5, size, size, generator=gen)
    labels = torch.zeros(4, size, size, dtype=torch.uint8)
    u = size // 64
    for t in range(4):
        y, x = 12 * u + 2 * t * u, 16 * u + t * u
        labels[t, y : y + 24 * u, x : x + 26 * u] = 1
        labels[t, y + 6 * u : y + 6 * u + u // 2, x + 6 * u : x + 6 * u + u // 2] = 0
        labels[t, y + 12 * u : y + 15 * u, x + 14 * u : x + 17 * u] = 0
    labels[1, 44 * u : 58 * u, 8 * u : 24 * u] = 2
    labels[3, 42 * u : 56 * u, 10 * u : 28 * u] = 2
    return frames, labels


def tokens_1_to_3_pointer(model, top, high_res, mask):
    """transformers' ``_use_mask_as_output`` pointer (best of output tokens 1-3)."""
    out = model._use_mask_as_output(top, high_res, mask)
    return out.object_pointer, out.object_score_logits


VARIANTS = {  # name: Sam2MemorySegmenter keyword arguments (+ "tokens" swaps the pointer)
    "ragsam": {}, "direct mask route": {"mask_route": "direct"}, "no hole filling": {"fill_hole_area": 0},
    "pointer tokens 1-3": {"tokens": True}, "shared pointer positions": {"pointer_positions": "shared"},
    "transformers video session": {"mask_route": "direct", "fill_hole_area": 0, "tokens": True},
}


def measure(seed: int, variants: Sequence[str] = ("ragsam",)) -> dict[str, dict[str, float]]:
    """``{variant: {case: max |d|}}``: ragsam's query low-res logits against Meta's, cases k = 1, 2, 4."""
    import tempfile

    import pytest

    import ragsam.retrieval.sam2_memory as sam2_memory
    from ragsam.models.sam2 import build_sam2
    from ragsam.retrieval.sam2_memory import Sam2MemorySegmenter, preprocess_slices

    torch.set_num_threads(1)
    result: dict[str, dict[str, float]] = {v: {} for v in variants}
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        predictor, path = official_weights(seed, Path(tmp))
        memoise_image_encoder(predictor)
        model = build_sam2(str(path))[0]
        frames, labels = parity_case()
        pixels = preprocess_slices(frames, int(model.config.image_size))
        features = Sam2MemorySegmenter(model).encode_pixels(pixels)
        for name, support in (("k1", [3]), ("k2", [2, 3]), ("k4", [0, 1, 2, 3])):
            ref = meta_query_logits(predictor, pixels[[*support, 4]],
                                    [[labels[t] == o for t in support] for o in (1, 2)], mp)
            for v in variants:
                kwargs = dict(VARIANTS[v])
                with pytest.MonkeyPatch.context() as swap:
                    if kwargs.pop("tokens", False):
                        swap.setattr(sam2_memory, "mask_pointer", tokens_1_to_3_pointer)
                    seg = Sam2MemorySegmenter(model, **kwargs)
                    pred = seg.segment(features[4], [seg.encode_support(features[t], labels[t]) for t in support],
                                       organs=[1, 2])
                result[v][name] = float((pred.low_res_logits - ref).abs().max())
    return result


if __name__ == "__main__":  # python tests/retrieval/meta_sam2.py [--variants] SEED... (see the parity test)
    import json
    import os
    import sys

    args = sys.argv[1:]
    chosen = list(VARIANTS) if "--variants" in args else ["ragsam"]
    for s in (a for a in args if a != "--variants"):
        print(json.dumps({"seed": int(s), "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", "(native)"),
                          "max_abs_difference": measure(int(s), chosen)}), flush=True)
