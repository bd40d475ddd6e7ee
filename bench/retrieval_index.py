"""Retrieval-index benchmark: build time, query latency and recall@10 of exact, IVF and HNSW indexes.

Indexes are built by ``ragsam.retrieval.faiss_index.build_index`` (the code the
support bank uses) with its default parameters, over synthetic *clustered*
unit vectors (a mixture of ``n / 100`` directions with spread, like slice
embeddings of many cases; structureless random vectors are the worst case for
IVF and are not what DINOv2 produces). Queries are held-out points of the same
mixture.

* ``reference``: exact top-k in NumPy (one matrix-vector product and a partial
  sort per query, no index), one query at a time.
* ``flat`` / ``ivf`` / ``ivfpq`` / ``hnsw``: ragsam's Faiss indexes (``index_bytes``: the
  serialised index, i.e. its memory, beside ``float32_bytes`` = 4 n D); latency of single
  queries (what segmenting one slice needs) and throughput of a batch of
  queries; recall@10 against the exact neighbours. IVF's ``build_s`` includes
  the build-time ``nprobe`` calibration (also given alone as ``calibrate_s``; IVF-PQ's
  target capped at 0.99 of its all-lists recall when out of reach, as ``build_index`` does);
  ``sweep`` gives its recall and latency at other ``nprobe`` values.
* ``ivfpq_refine`` (measured with ``ivfpq``, on the same trained index; ``build_s`` = that
  index's train + add time plus its own calibration): what an IVF-PQ bank does, a shortlist
  of ``--refine x k`` rows re-scored with exact inner products of the vectors, read from a
  memory-mapped ``.npy`` (written to ``--tmp``; ``embeddings_bytes`` on disk). Plain
  ``ivfpq`` in the same run is its reference.

``--spread`` sets how far points lie from their cluster direction (0.6: cosine
~0.74 within a cluster; larger is harder for IVF, which then needs more lists).

Example:
    python bench/retrieval_index.py --json bench/results/retrieval_index.json
    python bench/retrieval_index.py --threads 1 --sizes 1000000 --dims 384 768 --kinds flat ivf
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path


def _blas_threads_from_argv(argv: list[str]) -> None:
    """Give NumPy's BLAS the ``--threads`` count too; it reads these variables only when first imported.

    Without this the NumPy reference runs with one BLAS thread per core, which on a
    shared, loaded machine spins on barriers and makes the reference look 10x slower.
    """
    if "--threads" in argv[:-1]:
        n = argv[argv.index("--threads") + 1]
        if n.isdigit() and int(n) > 0:
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, n)


if __name__ == "__main__":
    _blas_threads_from_argv(sys.argv)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_parser, emit, machine  # noqa: E402
from modes import load_average  # noqa: E402

K = 10
KINDS = ("flat", "ivf", "ivfpq", "hnsw")
SWEEP_NPROBE = (1, 2, 4, 8, 16, 32, 64)


def clustered_unit_vectors(n: int, dim: int, seed: int, centres: np.ndarray | None = None,
                           spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 unit vectors around random centre directions; returns ``(vectors, centres)``."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.standard_normal((max(1, n // 100), dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    chunk = 65536
    for start in range(0, n, chunk):  # chunked: 1e6 x 768 is 3 GB already
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, dim), dtype=np.float32) * (
            spread / np.sqrt(dim))
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centres


def exact_numpy(vectors: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` largest inner products with one query, best first (the reference search)."""
    sims = vectors @ query
    top = np.argpartition(-sims, k)[:k]
    return top[np.argsort(-sims[top])]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k rows found, ``(Q, k)`` each."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth,
                                                                                                   strict=True)]))


def single_queries(index, q: np.ndarray, vectors: np.ndarray | None = None,
                   refine: int | None = None) -> tuple[list[float], np.ndarray]:
    """Seconds of each one-query search and the rows found, ``(Q, K)`` (re-ranked with ``vectors`` and ``refine``)."""
    from ragsam.retrieval.faiss_index import search

    times, found = [], np.empty((len(q), K), dtype=np.int64)
    for i in range(len(q)):
        start = time.perf_counter()
        _, rows = search(index, q[i:i + 1], K, vectors=vectors, refine=refine)
        times.append(time.perf_counter() - start)
        found[i] = rows[0]
    return times, found


def nprobe_sweep(index, q: np.ndarray, truth: np.ndarray, vectors: np.ndarray | None = None,
                 refine: int | None = None) -> list[dict]:
    """Recall@10 and median single-query ms of an IVF index at :data:`SWEEP_NPROBE` (restores its nprobe)."""
    chosen, out = index.nprobe, []
    for nprobe in (p for p in SWEEP_NPROBE if p <= index.nlist):
        index.nprobe = nprobe
        times, found = single_queries(index, q, vectors, refine)
        out.append({"nprobe": nprobe, "query_ms_median": round(1e3 * statistics.median(times), 3),
                    "recall_at_10": round(recall_at_k(found, truth), 4)})
    index.nprobe = chosen
    return out


def bench_size(n: int, dim: int, kinds: list[str], queries: int, hnsw_max: int, seed: int = 0,
               spread: float = 0.6, target_recall: float = 0.95, refine: int = 10, tmp: str | None = None) -> dict:
    """All index kinds at one (n, D)."""
    import tempfile

    vectors, centres = clustered_unit_vectors(n, dim, seed, spread=spread)
    q, _ = clustered_unit_vectors(queries, dim, seed + 1, centres, spread=spread)
    row: dict = {"n": n, "dim": dim, "queries": queries, "spread": spread, "load_average_start": load_average()}
    times = []
    truth = np.empty((queries, K), dtype=np.int64)
    for i in range(queries):
        start = time.perf_counter()
        truth[i] = exact_numpy(vectors, q[i], K)
        times.append(time.perf_counter() - start)
    row["reference"] = {"what": "numpy exact, one query at a time", "query_ms_median": round(
        1e3 * statistics.median(times), 3), "recall_at_10": 1.0}
    for kind in kinds:
        if kind == "hnsw" and n > hnsw_max:
            row[kind] = {"skipped": f"n > --hnsw-max {hnsw_max} (HNSW took 186-287 s to build at 1e5 on one "
                                    "core; the build grows faster than n)"}
            continue
        with tempfile.TemporaryDirectory(dir=tmp) as folder:
            stored = None
            if kind == "ivfpq" and refine:
                np.save(Path(folder) / "embeddings.npy", vectors)
                stored = np.load(Path(folder) / "embeddings.npy", mmap_mode="r")  # as the bank reads it
            row.update(bench_kind(kind, vectors, q, truth, row["reference"]["query_ms_median"], seed,
                                  target_recall, refine, stored))
            del stored
    row["load_average_end"] = load_average()
    return row


def bench_kind(kind: str, vectors: np.ndarray, q: np.ndarray, truth: np.ndarray, ref_ms: float, seed: int,
               target_recall: float, refine: int, stored: np.ndarray | None) -> dict:
    """``{kind: figures}``; for ``ivfpq`` with ``stored`` (memory map) also ``ivfpq_refine`` on the same index."""
    import faiss

    from ragsam.retrieval.faiss_index import PQ_CEILING_FRACTION, build_index, calibrate_nprobe, search

    n, dim = vectors.shape
    load = load_average()
    start = time.perf_counter()
    index, built = build_index(vectors, kind, seed=seed, target_recall=None, refine=refine)  # calibration timed apart
    train_s = time.perf_counter() - start
    writer = faiss.VectorIOWriter()  # not faiss.serialize_index: its vector_to_array fails once SimpleITK's
    faiss.write_index(index, writer)  # SWIG std::vector<uint8> proxy is registered in the same process
    index_bytes = int(writer.data.size())  # what the index holds in memory, as written
    modes = [(kind, None)] + ([("ivfpq_refine", refine)] if stored is not None else [])
    out = {}
    for name, shortlist in modes:
        settings, calibrate_s = dict(built), None
        if kind in ("ivf", "ivfpq"):
            calibrated = time.perf_counter()
            nprobe, recall = calibrate_nprobe(index, vectors, target_recall, seed=seed, refine=shortlist,
                                              ceiling_fraction=PQ_CEILING_FRACTION if kind == "ivfpq" else None)
            calibrate_s = round(time.perf_counter() - calibrated, 3)
            settings.update(nprobe=nprobe, calibration={"target_recall": target_recall, "recall_at_k": round(recall, 4)})
        settings["refine"] = shortlist
        exact = stored if shortlist else None
        single, found = single_queries(index, q, exact, shortlist)
        start = time.perf_counter()
        search(index, q, K, vectors=exact, refine=shortlist)
        batch_s = time.perf_counter() - start
        query_ms = 1e3 * statistics.median(single)
        out[name] = {"settings": settings, "build_s": round(train_s + (calibrate_s or 0.0), 3),
                     "query_ms_median": round(query_ms, 3), "batch_queries_per_s": round(len(q) / batch_s, 1),
                     "recall_at_10": round(recall_at_k(found, truth), 4),
                     "speedup_vs_reference": round(ref_ms / query_ms, 2) if query_ms else None,
                     "load_average": load, "index_bytes": index_bytes,
                     "index_bytes_per_vector": round(index_bytes / n, 1), "float32_bytes": 4 * n * dim}
        if shortlist:
            out[name]["embeddings_bytes"] = int(stored.nbytes)  # on disk, memory-mapped: rows read per query
        if kind in ("ivf", "ivfpq"):
            out[name].update(train_s=round(train_s, 3), calibrate_s=calibrate_s,
                             sweep=nprobe_sweep(index, q, truth, exact, shortlist))
        load = load_average()
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__, "cpu", "cpu only (ragsam's indexes are faiss-cpu)", "faiss OpenMP threads (0 = default)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 768])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--queries", type=int, default=200, help="held-out queries per size")
    parser.add_argument("--hnsw-max", type=int, default=100_000,
                        help="skip HNSW above this many vectors (1e6 takes tens of minutes on 2 cores)")
    parser.add_argument("--spread", type=float, default=0.6, help="distance of points from their cluster direction")
    parser.add_argument("--target-recall", type=float, default=0.95, help="recall@10 IVF's nprobe is calibrated to")
    parser.add_argument("--refine", type=int, default=10,
                        help="ivfpq_refine: shortlist refine x k rows re-ranked exactly (0: no ivfpq_refine row)")
    parser.add_argument("--tmp", default=None, help="folder for ivfpq_refine's memory-mapped vectors (default: system temp)")
    parser.add_argument("--max-bytes", type=float, default=4e9,
                        help="skip (n, D) whose vectors exceed this many bytes (1e6 x 768 float32 = 3.1e9)")
    args = parser.parse_args(argv)
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.dims, args.queries = [2000], [32], 20
    results, skipped = [], []
    for dim in args.dims:
        for n in args.sizes:
            if 4.0 * n * dim > args.max_bytes:
                skipped.append({"n": n, "dim": dim, "why": f"{4 * n * dim / 1e9:.1f} GB > --max-bytes"})
                continue
            results.append(bench_size(n, dim, args.kinds, args.queries, args.hnsw_max, spread=args.spread,
                                      target_recall=args.target_recall, refine=args.refine, tmp=args.tmp))
    result = {"benchmark": "retrieval_index", "machine": machine(), "device": "cpu", "quick": args.quick,
              "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(), "k": K,
              "results": results, "skipped": skipped}
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
