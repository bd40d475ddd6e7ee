"""Faiss inner-product indexes over unit vectors (inner product = cosine similarity).

Kinds (``build_index(kind=...)``):

* ``"flat"`` - ``IndexFlatIP``, exact. Memory ``4 n D`` bytes; a query scans
  every vector. The right choice for any bank built from labelled CT (BTCV's
  30 cases are ~4 000 slices).
* ``"ivf"`` - ``IndexIVFFlat`` with ``nlist = 4 sqrt(n)`` inverted lists (the
  low end of Faiss' "4 to 16 sqrt(n)" guideline; capped at ``n / 39`` so k-means
  has the 39 training points per centroid Faiss asks for). The centroids come
  from spherical k-means (:data:`IVF_KMEANS_ITERATIONS` iterations) on a seeded
  sample of :data:`IVF_TRAIN_POINTS_PER_LIST` ``x nlist`` vectors (Faiss asks
  for 30 to 256 per list), not on all of them (160 000 points at 1e6). ``nprobe``
  (lists scanned per query) is calibrated at build time to the smallest value
  whose recall@10 on held-out bank vectors reaches ``target_recall``
  (:func:`calibrate_nprobe`). Stores the full vectors, so the scores of what it
  finds are exact. Measured on one core (bench/results/cpu/retrieval_index_1e6_s2.json,
  1e6 clustered vectors): build 118 s (D = 384) / 227 s (D = 768), calibration
  included; 0.19 / 0.34 ms per query at recall@10 0.995 / 0.999 (flat: 64 / 162 ms).
* ``"ivfpq"`` - ``IndexIVFPQ`` for banks that do not fit in memory as float32
  (1e7 x 768 = 30 GB): the IVF lists of ``"ivf"`` (same ``nlist``, training sample,
  spherical k-means and build-time ``nprobe`` calibration) holding product-quantised
  residuals instead of the vectors: ``m = D / 8`` sub-quantizers (:func:`pq_subquantizers`;
  8 dimensions each, the largest divisor of ``D`` not above ``D / 8`` otherwise) of
  ``nbits = 8`` (256 centroids each; fewer for tiny banks, :func:`pq_bits`, so each
  centroid keeps ~32 training points), i.e. ``m`` bytes a vector: 96 B for D = 768
  (32x less than float32), 48 B for D = 384. PQ scores are approximations (alone:
  recall@10 0.39 at 1e5 clustered vectors, bench/results/cpu/retrieval_index_ivfpq_1e5.json),
  so a bank re-ranks (:func:`search` with ``vectors``): the index gives a shortlist of
  ``refine x k`` rows (``settings["refine"]``, default :data:`PQ_REFINE`), their exact
  inner products are computed from the float32 vectors (the bank's memory-mapped
  ``embeddings.npy``: only the shortlisted rows are read) and the top ``k`` of those are
  returned, scores exact. The ``nprobe`` calibration measures recall with this re-ranking.
  Recall can still stay below the target at any ``nprobe`` (a true neighbour PQ ranks
  below the shortlist is never seen), so when scanning every list misses the target,
  ``nprobe`` is the smallest reaching 0.99 of that all-lists recall
  (``calibration.ceiling_fraction``); the all-lists search is made only then (with
  re-ranking the target is usually reached well below ``nlist``, and that search, the
  most expensive one, was wasted). ``auto`` never picks ``ivfpq``. Measured on one core
  (bench/results/cpu/retrieval_index_ivfpq_refine_*.json, clustered vectors): re-ranked
  recall@10 0.995 / 0.999 at 1e5 x 384 / 768 (PQ alone 0.38), 0.985 / 0.999 at 1e6
  (PQ alone 0.29 / 0.30); 0.17-0.68 ms a query once the memory map's pages are touched
  (+0.08-0.13 ms over PQ alone); 63-151 B a vector in memory.
* ``"hnsw"`` - ``IndexHNSWFlat`` (``M = 32`` links, ``efConstruction = 200``,
  ``efSearch`` default 128), metric inner product. No training, but slow to
  build on CPU (1e5 x 768: 287 s on one core); memory ``n (4 D + 8 M)`` bytes.
* ``"auto"`` - ``flat`` below :data:`FLAT_MAX` (100 000) vectors, ``ivf`` from
  there on (it built 10-35x faster than ``hnsw`` and answered faster at equal
  recall in bench/retrieval_index.py), unless the target recall needs more than
  :data:`AUTO_MAX_PROBE_FRACTION` of the lists: then the vectors have no cluster
  structure IVF can use and ``auto`` builds ``flat`` after all (exact, and about
  as fast: at 1e6 x 384 vectors whose neighbours mostly lie outside their cluster,
  bench ``--spread 2.0``, IVF needed ~2 500 of 4 000 lists for recall 0.95 and
  took 55 ms per query against flat's 62 ms).

Not used, measured at 1e6 x 768 on one core: an HNSW coarse quantizer
(``IVF4000_HNSW32``) saved ~0.1 ms of the ~0.3 ms query and lost recall (0.98
at quantizer efSearch 32); SQ8 storage would make the returned scores approximate.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ragsam.errors import InputError
from ragsam.utils.atomic import atomic_path

INDEX_KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
PQ_DIMS_PER_SUBQUANTIZER = 8
PQ_MAX_BITS = 8
PQ_POINTS_PER_CENTROID = 32
PQ_CEILING_FRACTION = 0.99
PQ_REFINE = 10  # IVF-PQ shortlist: refine x k rows re-scored exactly
FLAT_MAX = 100_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
NORM_TOLERANCE = 1e-3
IVF_TRAIN_POINTS_PER_LIST = 40
IVF_KMEANS_ITERATIONS = 10
TARGET_RECALL = 0.95
CALIBRATION_QUERIES = 500
CALIBRATION_K = 10
AUTO_MAX_PROBE_FRACTION = 0.25
SCORE_TIE_TOLERANCE = 1e-5
_CHUNK = 65536


def choose_kind(n: int) -> str:
    """The index kind ``"auto"`` picks for ``n`` vectors (see the module docstring)."""
    return "flat" if n < FLAT_MAX else "ivf"


def default_nlist(n: int) -> int:
    """``4 sqrt(n)`` lists, at most ``n // 39`` (Faiss' minimum training points per centroid), at least 1."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query without calibration: ``nlist / 16`` clamped to ``[8, nlist]``."""
    return min(nlist, max(8, nlist // 16))


def pq_subquantizers(dim: int) -> int:
    """Sub-quantizers for ``dim``: the largest divisor of ``dim`` not above ``dim / 8`` (at least 1)."""
    top = max(1, dim // PQ_DIMS_PER_SUBQUANTIZER)
    return next(m for m in range(top, 0, -1) if dim % m == 0)


def pq_bits(train_points: int) -> int:
    """Bits per sub-quantizer code: 8, or fewer so that each of the ``2**nbits`` centroids
    keeps about :data:`PQ_POINTS_PER_CENTROID` training points (tiny banks), at least 1."""
    return max(1, min(PQ_MAX_BITS, int(math.log2(max(2, train_points // PQ_POINTS_PER_CENTROID)))))


def training_sample(x: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """Rows to train ``nlist`` centroids on: all of ``x`` or a seeded sample of ``IVF_TRAIN_POINTS_PER_LIST x nlist``.

    Args:
        x: float32 ``(n, D)``.
    Returns:
        float32 ``(m, D)`` with ``m = min(n, IVF_TRAIN_POINTS_PER_LIST * nlist)``, rows in their original order.
    """
    size = IVF_TRAIN_POINTS_PER_LIST * nlist
    if len(x) <= size:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=size, replace=False))
    return x[rows]


def check_unit_vectors(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Return ``vectors`` as C-contiguous float32 ``(n, D)``; refuse rows whose norm is not 1.

    Norms are computed in chunks, so a 3 GB bank is not copied.

    Raises:
        InputError: wrong rank, NaN/inf, or a row norm outside ``1 +- NORM_TOLERANCE``.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(None, f"{what} must have shape (n, D); got {x.shape}")
    low, high = np.inf, -np.inf
    for start in range(0, len(x), _CHUNK):
        part = x[start:start + _CHUNK]
        if not np.isfinite(part).all():
            raise InputError(None, f"{what} contain NaN or infinite values")
        norms = np.sqrt(np.einsum("ij,ij->i", part, part))
        low, high = min(low, float(norms.min())), max(high, float(norms.max()))
    if len(x) and max(abs(low - 1), abs(high - 1)) > NORM_TOLERANCE:
        raise InputError(None, f"{what} are not L2-normalised (norms {low:.4g} .. {high:.4g}); "
                               "inner product equals cosine only for unit vectors")
    return x


def check_refine(refine: int, source: object = None) -> int:
    """The IVF-PQ shortlist multiple ``refine`` as an int; refuses values below 1 (naming ``source``)."""
    if int(refine) < 1:
        raise InputError(source, f"refine {refine} must be at least 1 (shortlist refine x k rows)")
    return int(refine)


def build_index(vectors: np.ndarray, kind: str = "auto", *, nlist: int | None = None,
                nprobe: int | None = None, hnsw_m: int = HNSW_M, ef_search: int | None = None,
                seed: int = 0, target_recall: float | None = TARGET_RECALL, refine: int = PQ_REFINE):
    """Build and fill an inner-product index.

    Args:
        vectors: float32 ``(n, D)`` unit vectors (row ``i`` gets id ``i``).
        kind: one of :data:`INDEX_KINDS`.
        nlist: IVF lists (default :func:`default_nlist`).
        nprobe: IVF lists scanned per query; ``None`` calibrates it to ``target_recall``
            (or uses :func:`default_nprobe` when ``target_recall`` is ``None``).
        hnsw_m, ef_search: HNSW settings.
        seed: seeds the IVF training sample, k-means and the calibration queries.
        target_recall: recall@10 the calibrated ``nprobe`` must reach on held-out bank vectors.
        refine: IVF-PQ only: shortlist ``refine x k`` rows per search, re-scored exactly
            (stored as ``settings["refine"]``, used by the calibration and by the bank).
    Returns:
        ``(index, settings)``; ``settings`` is a JSON-able dict with the resolved kind and
        parameters (for IVF also ``train_points``, ``kmeans_iterations`` and ``calibration``).
    """
    import faiss

    x = check_unit_vectors(vectors)
    if kind not in INDEX_KINDS:
        raise InputError(None, f"index kind {kind!r} is not one of {', '.join(INDEX_KINDS)}")
    if len(x) == 0:
        raise InputError(None, "cannot build an index of zero vectors")
    if target_recall is not None and not 0.0 < target_recall <= 1.0:
        raise InputError(None, f"target recall {target_recall} must be in (0, 1]")
    check_refine(refine)
    n, dim = x.shape
    resolved = choose_kind(n) if kind == "auto" else kind
    settings: dict = {"kind": resolved, "requested_kind": kind, "metric": "inner_product", "dim": dim, "count": n}
    if resolved == "flat":
        index = faiss.IndexFlatIP(dim)
    elif resolved in ("ivf", "ivfpq"):
        lists = int(nlist) if nlist else default_nlist(n)
        if not 1 <= lists <= n:
            raise InputError(None, f"nlist {lists} must be between 1 and the number of vectors {n}")
        quantizer = faiss.IndexFlatIP(dim)
        sample = training_sample(x, lists, seed)
        if resolved == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        else:
            m, nbits = pq_subquantizers(dim), pq_bits(len(sample))
            index = faiss.IndexIVFPQ(quantizer, dim, lists, m, nbits, faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.seed = int(seed)
            settings.update(pq_m=m, pq_nbits=nbits, bytes_per_vector=index.code_size, refine=int(refine))
        index.cp.spherical = True  # centroids on the unit sphere suit cosine data
        index.cp.seed = int(seed)
        index.cp.niter = IVF_KMEANS_ITERATIONS
        index.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST  # the sample is already this size
        index.train(sample)  # faiss' Python wrapper keeps a reference to the quantizer
        settings.update(nlist=lists, seed=int(seed), train_points=len(sample), kmeans_iterations=IVF_KMEANS_ITERATIONS)
        del sample
    else:
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        settings.update(hnsw_m=int(hnsw_m), ef_construction=HNSW_EF_CONSTRUCTION)
    index.add(x)
    if resolved in ("ivf", "ivfpq") and not nprobe and target_recall is not None:
        limit = max(1, int(AUTO_MAX_PROBE_FRACTION * index.nlist)) if kind == "auto" else None
        ceiling = PQ_CEILING_FRACTION if resolved == "ivfpq" else None
        nprobe, recall = calibrate_nprobe(index, x, target_recall, seed=seed, max_nprobe=limit,
                                          ceiling_fraction=ceiling, refine=settings.get("refine"))
        calibration = {"target_recall": float(target_recall), "recall_at_k": round(recall, 4), "nprobe": nprobe,
                       **({"ceiling_fraction": ceiling} if ceiling else {}),
                       "k": min(CALIBRATION_K, n - 1), "queries": min(CALIBRATION_QUERIES, n), "seed": int(seed)}
        if recall < target_recall and limit is not None:  # no usable cluster structure: exact search instead
            index = faiss.IndexFlatIP(dim)
            index.add(x)
            return index, {**{k: settings[k] for k in ("requested_kind", "metric", "dim", "count")}, "kind": "flat",
                           "ivf_calibration": {**calibration, "nlist": settings["nlist"]}}
        settings["calibration"] = calibration
    settings.update(set_search_params(index, nprobe=nprobe, ef_search=ef_search))
    return index, settings


def held_out_recall(found: tuple[np.ndarray, np.ndarray], exact: tuple[np.ndarray, np.ndarray],
                    rows: np.ndarray, k: int) -> float:
    """Recall@k of a search for bank rows ``rows`` with each query's own row left out.

    A found row counts when its score is at least the ``k``-th exact score (minus
    :data:`SCORE_TIE_TOLERANCE`), so among tied duplicates (e.g. blank slices) any
    one is correct.

    Args:
        found, exact: ``(scores (Q, k + 1), rows (Q, k + 1))`` from the index and from exact search.
        rows: ``(Q,)`` bank row of each query.
    Returns:
        Mean over queries of (correct found rows, at most ``k``) / ``k``.
    """
    def without_self(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
        keep = ids != rows[:, None]
        keep[keep.sum(1) > k, -1] = False  # own row not returned (a tied duplicate was): drop the last
        kept = np.where(ids >= 0, scores, -np.inf)[keep]  # id -1: fewer than k + 1 found
        return kept.reshape(len(rows), k)

    exact_scores, found_scores = without_self(*exact), without_self(*found)
    kth = exact_scores[:, k - 1:k] - SCORE_TIE_TOLERANCE
    return float(np.mean(np.minimum((found_scores >= kth).sum(1), k) / k))


def calibrate_nprobe(index, vectors: np.ndarray, target_recall: float = TARGET_RECALL,
                     queries: int = CALIBRATION_QUERIES, k: int = CALIBRATION_K, seed: int = 0,
                     max_nprobe: int | None = None, ceiling_fraction: float | None = None,
                     refine: int | None = None) -> tuple[int, float]:
    """Smallest ``nprobe`` (up to 1/8 more above 8) whose held-out recall@``k`` reaches ``target_recall``.

    ``queries`` bank vectors (seeded choice) search the filled IVF index with their own
    row left out (:func:`held_out_recall`), as the bank searches (:func:`search`; with
    ``refine``, re-ranked exactly with ``vectors``); exact neighbours come from ``faiss.knn``.
    Recall does not fall as ``nprobe`` grows (IVF-flat: more lists, exact scores; IVF-PQ
    nearly so), so doubling ``nprobe`` and then bisecting finds it in ``O(log nlist)``
    searches; bisection stops within 1/8 because searches with large ``nprobe`` cost
    nearly a full scan each.

    Args:
        index: a filled ``faiss.IndexIVF`` (its ``nprobe`` is left at the result).
        vectors: float32 ``(n, D)``, the vectors the index holds, in id order.
        max_nprobe: largest value tried (default ``nlist``).
        ceiling_fraction: when the recall at ``max_nprobe`` is below the target, lower the
            target to this fraction of it (IVF-PQ: a true neighbour that PQ ranks below the
            shortlist is missed at any ``nprobe``, and scanning every list to chase an
            unreachable target gains nothing). The recall at ``max_nprobe`` is measured only
            when the doubling reaches it without meeting the target.
        refine: re-rank a shortlist of ``refine x (k + 1)`` rows exactly (IVF-PQ; see :func:`search`).
    Returns:
        ``(nprobe, recall)``; the largest value tried and its recall if the target is
        not reached (``(nlist, 1.0)`` if the index holds fewer than two vectors).
    """
    import faiss

    n, nlist = int(index.ntotal), int(index.nlist)
    k = min(int(k), n - 1)
    if k < 1:
        index.nprobe = nlist
        return nlist, 1.0
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(int(queries), n), replace=False))
    q = np.ascontiguousarray(vectors[rows])
    exact = faiss.knn(q, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    measured: dict[int, float] = {}

    def recall(p: int) -> float:
        if p not in measured:
            index.nprobe = p
            _, ids = search(index, q, k + 1, vectors=vectors if refine else None, refine=refine)
            scores = np.einsum("qkd,qd->qk", vectors[np.maximum(ids, 0)], q)  # exact, whatever the index scored
            measured[p] = held_out_recall((np.where(ids >= 0, scores, -np.inf), ids), exact, rows, k)
        return measured[p]

    limit = nlist if max_nprobe is None else max(1, min(int(max_nprobe), nlist))
    low, high = 0, 1  # recall(low) < target (0: not tried); recall(high) >= target once found
    while high < limit and recall(high) < target_recall:
        low, high = high, min(2 * high, limit)
    if recall(high) < target_recall and ceiling_fraction is not None:  # high == limit: the target is out of reach
        target_recall = ceiling_fraction * recall(limit)
        high = min(p for p, r in measured.items() if r >= target_recall)
        low = max((p for p, r in measured.items() if r < target_recall and p < high), default=0)
    if recall(high) >= target_recall:
        while high - low > max(1, high // 8):
            mid = (low + high) // 2
            low, high = (low, mid) if recall(mid) >= target_recall else (mid, high)
    index.nprobe = high
    return high, recall(high)


def set_search_params(index, nprobe: int | None = None, ef_search: int | None = None) -> dict:
    """Set ``nprobe`` (IVF) or ``efSearch`` (HNSW); ``None`` keeps the default. Returns what was set."""
    import faiss

    if isinstance(index, faiss.IndexIVF):
        value = int(nprobe) if nprobe else default_nprobe(index.nlist)
        index.nprobe = max(1, min(value, index.nlist))
        return {"nprobe": int(index.nprobe)}
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = int(ef_search) if ef_search else HNSW_EF_SEARCH
        return {"ef_search": int(index.hnsw.efSearch)}
    return {}


def search(index, queries: np.ndarray, k: int, *, vectors: np.ndarray | None = None,
           refine: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product; with ``vectors`` and ``refine``, re-ranked exactly.

    Re-ranking (IVF-PQ banks): the index returns a shortlist of ``min(n, refine x k)``
    rows by its own (approximate) scores; :func:`exact_rerank` scores them with the exact
    inner products of ``vectors`` and keeps the best ``k``. The result is exact search
    whenever the true top ``k`` lie in the shortlist.

    Args:
        queries: float32 ``(Q, D)`` unit vectors.
        vectors: float32 ``(n, D)``, the indexed vectors in id order (e.g. the bank's
            memory-mapped ``embeddings.npy``); only shortlisted rows are read.
        refine: shortlist length as a multiple of ``k`` (``None``: no re-ranking).
    Returns:
        ``(scores float32 (Q, k), rows int64 (Q, k))`` best first (re-ranked: ties by
        row); row ``-1`` (score ``-inf``-like) where an approximate index found fewer than ``k``.
    """
    q = check_unit_vectors(queries, "query vectors")
    if q.shape[1] != index.d:
        raise InputError(None, f"query vectors have dimension {q.shape[1]}, the index {index.d}")
    n = int(index.ntotal)
    k = max(1, min(int(k), n))
    if vectors is None or not refine:
        scores, rows = index.search(q, k)
        return scores.astype(np.float32), rows.astype(np.int64)
    _, shortlist = index.search(q, min(n, int(refine) * k))
    return exact_rerank(vectors, q, shortlist.astype(np.int64), k)


def exact_rerank(vectors: np.ndarray, queries: np.ndarray, shortlist: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of each shortlist with the largest exact inner products.

    One query at a time, so a memory map only has ``s`` rows read per query (and the
    working set is ``s x D`` floats, not ``Q x s x D``).

    Args:
        vectors: float32 ``(n, D)`` (a memory map is fine).
        queries: float32 ``(Q, D)``.
        shortlist: int64 ``(Q, s)`` candidate rows, ``-1`` for none.
    Returns:
        ``(scores float32 (Q, k), rows int64 (Q, k))``, by exact score, ties by row;
        missing candidates as row ``-1``, score ``-inf``.
    """
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_rows = np.full((len(queries), k), -1, dtype=np.int64)
    for i, (query, rows) in enumerate(zip(queries, shortlist, strict=True)):
        rows = rows[rows >= 0]
        scores = np.asarray(vectors[rows], dtype=np.float32) @ query
        best = np.lexsort((rows, -scores))[:k]
        out_scores[i, :len(best)], out_rows[i, :len(best)] = scores[best], rows[best]
    return out_scores, out_rows


def reconstruct_all(index) -> np.ndarray:
    """All stored vectors, float32 ``(n, D)`` in id order (exact for flat, IVF-flat and HNSW-flat;
    the PQ reconstructions, approximate, for IVF-PQ)."""
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()
    return index.reconstruct_n(0, int(index.ntotal))


def save_index(index, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``index`` with ``faiss.write_index`` to a temporary sibling, then rename."""
    import faiss

    with atomic_path(path, force) as tmp:
        faiss.write_index(index, str(tmp))
    return Path(path)


def load_index(path: str | os.PathLike):
    """Read an index written by :func:`save_index`.

    Raises:
        InputError: missing or unreadable file.
    """
    import faiss

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "index file does not exist")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"not a readable Faiss index ({str(exc).strip().splitlines()[0][:160]})") from None
