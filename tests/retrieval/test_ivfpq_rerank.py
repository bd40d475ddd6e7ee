"""IVF-PQ re-ranking: a PQ shortlist re-scored with exact inner products of the stored vectors."""

from __future__ import annotations

import numpy as np
import pytest
from bank_fixtures import unit_rows

import ragsam.retrieval.faiss_index as faiss_index
from ragsam.errors import InputError
from ragsam.retrieval.faiss_index import PQ_REFINE, build_index, calibrate_nprobe, exact_rerank, search


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 20 shared directions (cosine ~0.8 within a cluster: near-ties PQ cannot order)."""
    centres = np.random.default_rng(100).standard_normal((20, dim))
    rng = np.random.default_rng(seed)
    return unit_rows(centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, dim)))


class ReadRecorder(np.memmap):
    """A memory map that records the keys it is indexed with."""

    keys: list[np.ndarray] = []

    def __getitem__(self, key):
        ReadRecorder.keys.append(np.array(key, copy=True))
        return super().__getitem__(key)


def test_exact_rerank_hand_computed():
    vectors = np.array([[1, 0], [0.6, 0.8], [0.8, 0.6], [0, 1]], np.float32)
    query = np.array([[1, 0]], np.float32)
    # shortlist in PQ's (wrong) order, one missing slot; exact cosines 0.6, 0.0, 0.8
    scores, rows = exact_rerank(vectors, query, np.array([[1, 3, 2, -1]]), 2)
    assert rows.tolist() == [[2, 1]]
    np.testing.assert_allclose(scores, [[0.8, 0.6]], atol=1e-7)
    scores, rows = exact_rerank(vectors, query, np.array([[3, -1, -1, -1]]), 2)  # fewer found than k
    assert rows.tolist() == [[3, -1]] and scores[0, 1] == -np.inf
    tied = np.array([[0.6, 0.8], [0.6, 0.8], [1, 0]], np.float32)
    assert exact_rerank(tied, query, np.array([[1, 0]]), 2)[1].tolist() == [[0, 1]]  # ties by row


def test_rerank_is_exact_search_when_the_shortlist_holds_the_true_top_k(tmp_path):
    x, queries = _clustered(2000, 32, seed=0), _clustered(50, 32, seed=1)
    np.save(tmp_path / "embeddings.npy", x)
    stored = np.load(tmp_path / "embeddings.npy", mmap_mode="r")
    assert isinstance(stored, np.memmap)
    index, settings = build_index(x, "ivfpq", target_recall=None)
    assert settings["refine"] == PQ_REFINE == 10 and index.nlist == 51
    exact_scores, exact_rows = search(build_index(x, "flat")[0], queries, 10)
    pq_scores, pq_rows = search(index, queries, 10)
    assert (pq_rows != exact_rows).any(axis=1).mean() > 0.5  # PQ alone orders most queries wrongly

    # all lists probed and refine x k >= n: the shortlist is the whole bank, so the result is exact
    index.nprobe = index.nlist
    scores, rows = search(index, queries, 10, vectors=stored, refine=200)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-6)
    by_numpy = np.einsum("qkd,qd->qk", x[rows].astype(np.float64), queries.astype(np.float64))
    np.testing.assert_allclose(scores, by_numpy, atol=1e-6)  # exact inner products...
    assert np.abs(pq_scores - np.einsum("qkd,qd->qk", x[pq_rows], queries)).max() > 1e-3  # ...not PQ's

    # the default shortlist (100 of 2000 rows): exact wherever it holds the true top 10
    scores, rows = search(index, queries, 10, vectors=stored, refine=PQ_REFINE)
    _, shortlist = index.search(queries, PQ_REFINE * 10)
    covered = np.array([set(t) <= set(s) for t, s in zip(exact_rows.tolist(), shortlist.tolist(), strict=True)])
    assert covered.sum() >= 40  # measured: 47 of 50
    np.testing.assert_array_equal(rows[covered], exact_rows[covered])
    np.testing.assert_allclose(scores[covered], exact_scores[covered], atol=1e-6)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", x[rows], queries), atol=1e-6)


def test_a_memory_mapped_rerank_reads_only_the_shortlisted_rows(tmp_path):
    x, query = _clustered(500, 16, seed=2), _clustered(1, 16, seed=3)
    np.save(tmp_path / "embeddings.npy", x)
    stored = np.load(tmp_path / "embeddings.npy", mmap_mode="r").view(ReadRecorder)
    index, _ = build_index(x, "ivfpq", nprobe=4)
    ReadRecorder.keys.clear()
    scores, rows = search(index, query, 3, vectors=stored, refine=5)
    _, shortlist = index.search(query, 15)
    assert [k.tolist() for k in ReadRecorder.keys] == [shortlist[0].tolist()]  # one read: the 15 rows
    best = np.argsort(-(x[shortlist[0]] @ query[0]), kind="stable")[:3]
    assert rows[0].tolist() == shortlist[0][best].tolist()


def test_calibration_measures_recall_after_reranking():
    """Measured (2000 x 32, 51 lists): re-ranked, held-out recall@10 0.934 at nprobe 2; PQ alone
    0.29 at 2 and at all 51 lists, so its target falls to 0.99 of the all-lists recall."""
    x = _clustered(2000, 32, seed=0)
    index, _ = build_index(x, "ivfpq", target_recall=None)
    probed: list[int] = []
    real_search = faiss_index.search

    def recording(idx, *args, **kwargs):
        probed.append(int(idx.nprobe))
        return real_search(idx, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(faiss_index, "search", recording)
        nprobe, recall = calibrate_nprobe(index, x, 0.9, refine=10, ceiling_fraction=0.99)
        assert recall >= 0.9 and nprobe < index.nlist and index.nlist not in probed  # no all-lists search
        probed.clear()
        plain_nprobe, plain_recall = calibrate_nprobe(index, x, 0.9, ceiling_fraction=0.99)
    assert index.nlist in probed and plain_recall < 0.5  # unreachable: the ceiling rule took over
    all_lists = calibrate_nprobe(index, x, 1.0)  # out of reach, no ceiling: every list scanned
    assert all_lists[0] == index.nlist and plain_recall >= 0.99 * all_lists[1] and plain_nprobe < index.nlist
    _, settings = build_index(x, "ivfpq", target_recall=0.9)  # what the bank stores: the same calibration
    assert settings["nprobe"] == nprobe and settings["calibration"]["recall_at_k"] == round(recall, 4)
    with pytest.raises(InputError, match="refine 0 must be at least 1"):
        build_index(x, "ivfpq", refine=0)
