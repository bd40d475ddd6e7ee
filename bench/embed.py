"""Slice-embedding benchmark: DINOv2 embeddings/s, reference mode vs the optimised path vs the cache.

The embedder is ``ragsam.retrieval.embedder.build_embedder`` (``"random"``: the
DINOv2 ViT-S/14 architecture of ``facebook/dinov2-small``, 384-d, randomly
initialised - no weights are needed to time it); slices are 512 x 512 in [0, 1]
and are resized to the embedder's 224 px input, as the bank and ``ragsam
segment`` do.

* ``reference``: eager attention, fp32, one slice per forward pass.
* ``optimised``: ``SliceEmbedder.embed`` as shipped - scaled-dot-product
  attention, ``--batch`` slices per pass, bf16 autocast on CUDA.
* ``cached``: the support bank keeps every embedding in its Faiss index; reading
  them back (``load_index`` + ``reconstruct_all``) is what a rebuilt index or
  a re-run retrieval pays instead of embedding again.

The reference and optimised embeddings are compared (max |difference|).

Example:
    python bench/embed.py --json bench/results/embed.json
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_torch_threads, bench_parser, emit, machine, sync  # noqa: E402
from modes import load_average, set_attention, speedup  # noqa: E402


def read_cached(vectors: np.ndarray) -> dict:
    """Time reading ``vectors`` back from a saved flat index (needs faiss; skipped without it)."""
    try:
        import faiss  # noqa: F401

        from ragsam.retrieval.faiss_index import build_index, load_index, reconstruct_all, save_index
    except ImportError:
        return {"skipped": "faiss is not installed"}
    with tempfile.TemporaryDirectory(prefix="ragsam-bench-") as tmp:
        index, _ = build_index(vectors, "flat")
        save_index(index, Path(tmp) / "index.faiss")
        start = time.perf_counter()
        cached = reconstruct_all(load_index(Path(tmp) / "index.faiss"))
        seconds = time.perf_counter() - start
    return {"what": "load_index + reconstruct_all of the bank's flat index", "seconds": round(seconds, 5),
            "embeddings_per_s": round(len(vectors) / max(seconds, 1e-9), 1),
            "exact": bool(np.array_equal(cached, vectors))}


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--weights", default="random", help="embedder weights (random = ViT-S/14 architecture)")
    parser.add_argument("--slices", type=int, default=64, help="slices to embed")
    parser.add_argument("--side", type=int, default=512, help="slice side (px) before resizing to 224")
    parser.add_argument("--batch", type=int, default=32, help="slices per pass (optimised mode)")
    args = parser.parse_args(argv)
    apply_torch_threads(args.threads)
    if args.quick:
        args.weights, args.slices, args.side, args.batch = "tiny", 4, 64, 4
    from ragsam.retrieval.embedder import build_embedder

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.slices, 3, args.side, args.side, generator=gen)
    embedder = build_embedder(args.weights, device=args.device, batch_size=args.batch)
    rows = {}

    set_attention(embedder.model, "eager")
    embedder.embed(images[:1], batch_size=1)  # warm-up
    sync(args.device)
    start = time.perf_counter()
    ref = embedder.embed(images, batch_size=1)
    sync(args.device)
    seconds = time.perf_counter() - start
    rows["reference"] = {"attention": "eager", "batch": 1, "seconds": round(seconds, 3),
                         "embeddings_per_s": round(args.slices / seconds, 2), "load_average": load_average()}

    set_attention(embedder.model, "sdpa")
    embedder.embed(images[:args.batch])  # warm-up
    sync(args.device)
    start = time.perf_counter()
    opt = embedder.embed(images)
    sync(args.device)
    seconds = time.perf_counter() - start
    rows["optimised"] = {"attention": "sdpa", "batch": args.batch, "bf16": embedder.device.type == "cuda",
                         "seconds": round(seconds, 3), "embeddings_per_s": round(args.slices / seconds, 2),
                         "load_average": load_average()}

    rows["cached"] = read_cached(opt)
    result = {"benchmark": "embed", "machine": machine(), "device": args.device, "quick": args.quick,
              "weights": args.weights, "dim": embedder.dim, "image_size": embedder.image_size,
              "slices": args.slices, "slice_side": args.side, **rows,
              "speedup": speedup(rows["reference"]["embeddings_per_s"], rows["optimised"]["embeddings_per_s"]),
              "max_abs_difference": float(np.abs(ref - opt).max())}
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
