"""Faiss inner-product indexes over unit vectors (inner product = cosine similarity).

Kinds (``build_index(kind=...)``):

* ``"flat"`` - ``IndexFlatIP``, exact. Memory ``4 n D`` bytes; a query scans
  every vector. The right choice for any bank built from labelled CT
  (BTCV's 30 cases are ~4 000 slices; even 1 000 labelled cases are ~1e5).
* ``"ivf"`` - ``IndexIVFFlat`` with ``nlist = 4 sqrt(n)`` inverted lists
  (capped at ``n / 39`` so k-means has the 39 training points per centroid
  Faiss asks for), spherical k-means trained on the vectors themselves, and
  ``nprobe`` lists scanned per query (default ``clamp(nlist / 16, 8, nlist)``).
  Stores the full vectors, so scores are exact for what it finds.
* ``"hnsw"`` - ``IndexHNSWFlat`` (``M = 32`` links, ``efConstruction = 200``,
  ``efSearch`` default 128), metric inner product. No training; memory
  ``n (4 D + 8 M)`` bytes.
* ``"auto"`` - ``flat`` below :data:`FLAT_MAX` (100 000) vectors, ``hnsw``
  below :data:`HNSW_MAX` (1 000 000), ``ivf`` above.

Measured recall@10 against ``flat`` (tests/retrieval/test_faiss_index.py, n =
2000, 100 queries): HNSW with the defaults 1.0 on random unit vectors (D = 64).
IVF with the defaults (51 lists, nprobe 8) 1.0 on clustered vectors (what
embeddings are) but 0.48 on structureless random vectors, where it needs
``nprobe ~ nlist / 2`` (25 of 51: 0.935 at D = 32).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ragsam.errors import InputError
from ragsam.utils.atomic import atomic_path

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
FLAT_MAX = 100_000
HNSW_MAX = 1_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
NORM_TOLERANCE = 1e-3


def choose_kind(n: int) -> str:
    """The index kind ``"auto"`` picks for ``n`` vectors (see the module docstring)."""
    if n < FLAT_MAX:
        return "flat"
    return "hnsw" if n < HNSW_MAX else "ivf"


def default_nlist(n: int) -> int:
    """``4 sqrt(n)`` lists, at most ``n // 39`` (Faiss' minimum training points per centroid), at least 1."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query: ``nlist / 16`` clamped to ``[8, nlist]``."""
    return min(nlist, max(8, nlist // 16))


def check_unit_vectors(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Return ``vectors`` as C-contiguous float32 ``(n, D)``; refuse rows whose norm is not 1.

    Raises:
        InputError: wrong rank, NaN/inf, or a row norm outside ``1 +- NORM_TOLERANCE``.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(None, f"{what} must have shape (n, D); got {x.shape}")
    if not np.isfinite(x).all():
        raise InputError(None, f"{what} contain NaN or infinite values")
    if len(x):
        norms = np.linalg.norm(x, axis=1)
        if np.abs(norms - 1).max() > NORM_TOLERANCE:
            raise InputError(None, f"{what} are not L2-normalised (norms {norms.min():.4g} .. {norms.max():.4g}); "
                                   "inner product equals cosine only for unit vectors")
    return x


def build_index(vectors: np.ndarray, kind: str = "auto", *, nlist: int | None = None,
                nprobe: int | None = None, hnsw_m: int = HNSW_M, ef_search: int | None = None,
                seed: int = 0):
    """Build and fill an inner-product index.

    Args:
        vectors: float32 ``(n, D)`` unit vectors (row ``i`` gets id ``i``).
        kind: one of :data:`INDEX_KINDS`.
        nlist, nprobe: IVF settings (defaults :func:`default_nlist`, :func:`default_nprobe`).
        hnsw_m, ef_search: HNSW settings.
        seed: k-means seed for IVF.
    Returns:
        ``(index, settings)``; ``settings`` is a JSON-able dict with the resolved kind and parameters.
    """
    import faiss

    x = check_unit_vectors(vectors)
    if kind not in INDEX_KINDS:
        raise InputError(None, f"index kind {kind!r} is not one of {', '.join(INDEX_KINDS)}")
    if len(x) == 0:
        raise InputError(None, "cannot build an index of zero vectors")
    n, dim = x.shape
    resolved = choose_kind(n) if kind == "auto" else kind
    settings: dict = {"kind": resolved, "requested_kind": kind, "metric": "inner_product", "dim": dim, "count": n}
    if resolved == "flat":
        index = faiss.IndexFlatIP(dim)
    elif resolved == "ivf":
        lists = int(nlist) if nlist else default_nlist(n)
        if not 1 <= lists <= n:
            raise InputError(None, f"nlist {lists} must be between 1 and the number of vectors {n}")
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.spherical = True  # centroids on the unit sphere suit cosine data
        index.cp.seed = int(seed)
        index.train(x)  # faiss' Python wrapper keeps a reference to the quantizer
        settings.update(nlist=lists, seed=int(seed))
    else:
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        settings.update(hnsw_m=int(hnsw_m), ef_construction=HNSW_EF_CONSTRUCTION)
    index.add(x)
    settings.update(set_search_params(index, nprobe=nprobe, ef_search=ef_search))
    return index, settings


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


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product.

    Args:
        queries: float32 ``(Q, D)`` unit vectors.
    Returns:
        ``(scores float32 (Q, k), rows int64 (Q, k))`` best first; row ``-1`` (score
        ``-inf``-like) where an approximate index found fewer than ``k``.
    """
    q = check_unit_vectors(queries, "query vectors")
    if q.shape[1] != index.d:
        raise InputError(None, f"query vectors have dimension {q.shape[1]}, the index {index.d}")
    k = max(1, min(int(k), int(index.ntotal)))
    scores, rows = index.search(q, k)
    return scores.astype(np.float32), rows.astype(np.int64)


def reconstruct_all(index) -> np.ndarray:
    """All stored vectors, float32 ``(n, D)`` in id order (exact for flat, IVF-flat and HNSW-flat)."""
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
