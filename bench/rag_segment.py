"""Retrieval-augmented segmentation benchmark: seconds per slice with and without precomputed support memories.

``ragsam.retrieval.sam2_memory.Sam2MemorySegmenter`` segments each query slice
from ``k`` support slices (k = 1, 4, 8). Query and support slices are synthetic
abdominal slices (:func:`phantom_slices`), so every support carries several organs.

* ``reference`` (no caching): every query slice encodes its ``k`` support images
  and their per-organ memories again (``segment_slice``), as a loop over the
  released video predictor - one fresh session per slice - does.
* ``optimised`` (precomputed): the supports' memories are encoded once
  (``encode_support``; reported as ``precompute_s``) and reused; per slice only
  the query is encoded (batched) and memory attention + decoding run.

Both give the same labels (``agreement``). The default SAM 2 on CPU is the
``tiny`` test architecture (128 px); ``--sam2 random`` is the SAM 2.1 Hiera-tiny
architecture at 1024 px (GPU).

Example:
    python bench/rag_segment.py --json bench/results/rag_segment.json
    python bench/rag_segment.py --sam2 random --slices 16 --device cuda
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_torch_threads, bench_parser, emit, machine, peak_memory_mb, sync  # noqa: E402
from modes import load_average, speedup  # noqa: E402


def phantom_slices(count: int, side: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` synthetic abdominal slices in [0, 1] and their labels, ``(count, side, side)``.

    A body ellipse with five elliptic "organs" (ids 1, 2, 3, 6, 7: spleen, kidneys, liver,
    stomach positions) whose size and position drift with z, plus noise. Made with NumPy
    only, so that this benchmark needs nothing beyond torch and transformers (GPU image).
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side * 2.0 - 1.0
    organs = {1: (0.45, -0.1, 0.15, 0.2), 2: (0.35, 0.25, 0.12, 0.15), 3: (-0.35, 0.25, 0.12, 0.15),
              6: (-0.4, -0.15, 0.3, 0.3), 7: (0.1, -0.3, 0.2, 0.12)}
    images = np.zeros((count, side, side), dtype=np.float32)
    labels = np.zeros((count, side, side), dtype=np.int64)
    for z in range(count):
        t = z / max(1, count - 1)
        body = (x / 0.9) ** 2 + (y / 0.7) ** 2 <= 1.0
        img = np.where(body, 0.45, 0.0)
        lab = np.zeros((side, side), dtype=np.int64)
        for organ, (cx, cy, rx, ry) in organs.items():
            grow = 0.6 + 0.8 * np.sin(np.pi * (t + 0.2 * organ / 7))
            inside = ((x - cx) / (rx * grow)) ** 2 + ((y - cy) / (ry * grow)) ** 2 <= 1.0
            lab[inside & body] = organ
            img = np.where(inside & body, 0.5 + 0.06 * organ, img)
        images[z] = np.clip(img + rng.normal(0.0, 0.02, img.shape), 0.0, 1.0)
        labels[z] = lab
    return torch.from_numpy(images), torch.from_numpy(labels)


def bench_k(seg, queries: torch.Tensor, sup_images: torch.Tensor, sup_labels: torch.Tensor, k: int,
            batch: int, device: str) -> dict:
    """Both modes for one ``k``."""
    images, labels = sup_images[:k], sup_labels[:k]
    n = len(queries)
    seg.segment_slice(queries[0], images, labels)  # warm-up
    sync(device)
    start = time.perf_counter()
    ref = [seg.segment_slice(q, images, labels).labels for q in queries]
    sync(device)
    ref_s = (time.perf_counter() - start) / n

    start = time.perf_counter()
    supports = [seg.encode_support(img, lab, key=i) for i, (img, lab) in enumerate(zip(images, labels, strict=True))]
    sync(device)
    precompute_s = time.perf_counter() - start
    start = time.perf_counter()
    opt = []
    for first in range(0, n, batch):
        for frame in seg.encode_images(queries[first:first + batch]):
            opt.append(seg.segment(frame, supports, output_size=tuple(queries.shape[-2:])).labels)
    sync(device)
    opt_s = (time.perf_counter() - start) / n
    agreement = float(np.mean([(a == b).float().mean().item() for a, b in zip(ref, opt, strict=True)]))
    return {"k": k, "organs_on_supports": len(set().union(*(s.organs for s in supports))),
            "reference": {"seconds_per_slice": round(ref_s, 4)},
            "optimised": {"seconds_per_slice": round(opt_s, 4), "precompute_s": round(precompute_s, 4),
                          "query_batch": batch},
            "speedup": speedup(1 / ref_s, 1 / opt_s), "agreement": round(agreement, 6),
            "load_average": load_average()}


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--sam2", default="tiny", help="SAM 2 weights (tiny | random | HF id | .pt)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8], help="support slices per query")
    parser.add_argument("--slices", type=int, default=8, help="query slices timed per k")
    parser.add_argument("--side", type=int, default=512, help="slice side (px)")
    parser.add_argument("--batch", type=int, default=8, help="query slices per image-encoder pass (optimised)")
    args = parser.parse_args(argv)
    apply_torch_threads(args.threads)
    if args.quick:
        args.ks, args.slices, args.side, args.batch = [1, 2], 2, 64, 2
    from ragsam.models.sam2 import build_sam2
    from ragsam.retrieval.sam2_memory import Sam2MemorySegmenter

    torch.manual_seed(0)
    model, info = build_sam2(args.sam2, device=args.device)
    seg = Sam2MemorySegmenter(model)
    queries, _ = phantom_slices(args.slices, args.side, seed=1)
    sup_images, sup_labels = phantom_slices(max(args.ks), args.side, seed=2)
    rows = [bench_k(seg, queries, sup_images, sup_labels, k, args.batch, args.device) for k in args.ks]
    result = {"benchmark": "rag_segment", "machine": machine(), "device": args.device, "quick": args.quick,
              "sam2": info, "slice_side": args.side, "query_slices": args.slices, "results": rows,
              "peak_memory_mb": round(peak_memory_mb(args.device), 1)}
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
