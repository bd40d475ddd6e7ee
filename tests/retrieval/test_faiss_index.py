"""Faiss inner-product indexes: exact scores, recall of IVF/HNSW, save/load, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from bank_fixtures import unit_rows

from ragsam.errors import InputError, OutputExistsError
from ragsam.retrieval.faiss_index import (
    IVF_TRAIN_POINTS_PER_LIST,
    build_index,
    choose_kind,
    default_nlist,
    default_nprobe,
    load_index,
    pq_bits,
    pq_subquantizers,
    reconstruct_all,
    save_index,
    search,
)

_unit = unit_rows


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)]))


def test_flat_scores_are_hand_computed_cosines():
    s = np.sqrt(0.5)
    vectors = np.array([[1, 0], [0, 1], [s, s], [-1, 0]], np.float32)
    index, settings = build_index(vectors, "auto")
    assert settings["kind"] == "flat" and settings["count"] == 4
    scores, rows = search(index, np.array([[1, 0]], np.float32), 3)
    assert rows.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(scores, [[1.0, s, 0.0]], atol=1e-6)
    np.testing.assert_allclose(reconstruct_all(index), vectors)


def test_auto_thresholds_and_ivf_defaults():
    assert choose_kind(99_999) == "flat"
    assert choose_kind(100_000) == "ivf"
    assert choose_kind(1_000_000) == "ivf"
    assert default_nlist(2000) == 51  # 4*sqrt(2000) = 178, capped at 2000 // 39 = 51
    assert default_nlist(1_000_000) == 4000
    assert IVF_TRAIN_POINTS_PER_LIST * default_nlist(1_000_000) == 160_000  # k-means sample at 1e6 vectors
    assert default_nprobe(51) == 8 and default_nprobe(4000) == 250 and default_nprobe(3) == 3


NPROBE_CLUSTERED, NPROBE_RANDOM = 2, 28  # calibrated to recall@10 0.95 (held out: 0.994 and 0.95+)


def test_recall_at_10_against_flat():
    """Measured (n = 2000, 100 queries): HNSW defaults 1.0 (D=64, random unit vectors); IVF
    with calibrated nprobe 1.0 on clustered vectors; on random ones (no cluster structure:
    IVF's worst case) the calibration has to scan 28 of 51 lists (fresh queries: 0.95)."""
    rng = np.random.default_rng(0)
    n, nq = 2000, 100
    base = _unit(rng.standard_normal((n, 64)))
    queries = _unit(rng.standard_normal((nq, 64)))
    flat, _ = build_index(base, "flat")
    truth = search(flat, queries, 10)[1]
    hnsw, settings = build_index(base, "hnsw")
    assert settings["ef_search"] == 128 and settings["hnsw_m"] == 32
    assert _recall(search(hnsw, queries, 10)[1], truth) >= 0.95

    centres = rng.standard_normal((40, 64))
    clustered = _unit(centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, 64)))
    cq = _unit(centres[rng.integers(0, 40, nq)] + 0.5 * rng.standard_normal((nq, 64)))
    ivf, settings = build_index(clustered, "ivf")
    assert settings["nlist"] == 51 and settings["nprobe"] == NPROBE_CLUSTERED
    assert _recall(search(ivf, cq, 10)[1], search(build_index(clustered, "flat")[0], cq, 10)[1]) >= 0.95

    base32, q32 = _unit(rng.standard_normal((n, 32))), _unit(rng.standard_normal((nq, 32)))
    ivf32, settings = build_index(base32, "ivf")
    assert settings["nprobe"] == NPROBE_RANDOM and settings["calibration"]["recall_at_k"] >= 0.95
    assert _recall(search(ivf32, q32, 10)[1], search(build_index(base32, "flat")[0], q32, 10)[1]) >= 0.93


def test_ivfpq_code_size_and_recall_on_clustered_vectors():
    """m = D / 8 sub-quantizers of 8 bits (m bytes a vector); fewer bits for a small sample; the
    nprobe calibration judges found rows by their exact cosines, not the PQ estimates, and
    measures the recall after re-ranking (test_ivfpq_rerank.py)."""
    assert (pq_subquantizers(768), pq_subquantizers(384), pq_subquantizers(64)) == (96, 48, 8)
    assert pq_subquantizers(100) == 10 and pq_subquantizers(7) == 1  # 100 / 8 = 12 is no divisor; 10 is
    assert (pq_bits(160_000), pq_bits(2000), pq_bits(40)) == (8, 5, 1)  # 2000 // 32 = 62 -> 2**5 centroids
    rng = np.random.default_rng(3)
    n, nq = 4000, 100
    centres = rng.standard_normal((40, 64))
    base = _unit(centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, 64)))
    queries = _unit(centres[rng.integers(0, 40, nq)] + 0.5 * rng.standard_normal((nq, 64)))
    index, settings = build_index(base, "ivfpq", refine=1)  # shortlist k: PQ's own ranking, as without re-ranking
    assert settings["kind"] == "ivfpq" and settings["nlist"] == default_nlist(n) == 102
    assert (settings["pq_m"], settings["pq_nbits"], settings["bytes_per_vector"]) == (8, 6, 6)  # 4000 // 32 = 125 -> 2**6
    assert index.ntotal == n and index.pq.M == 8 and index.pq.nbits == 6 and settings["refine"] == 1
    calibration = settings["calibration"]
    assert calibration["ceiling_fraction"] == 0.99 and settings["nprobe"] == calibration["nprobe"]
    best_scores = search(build_index(base, "flat")[0], queries, 10)[0]
    found_rows = search(index, queries, 10)[1]
    found_scores = np.einsum("qkd,qd->qk", base[found_rows], queries)  # exact cosines of what PQ found
    # measured: mean cosine of the true top 10 0.851, of IVF-PQ's top 10 0.827; held-out recall@10 0.318
    assert found_scores.mean() >= best_scores.mean() - 0.05
    # 6-bit codes of 8 dims on tight clusters cap recall far below 0.95: the calibration settles at
    # 0.99 of the all-lists recall (measured with exact cosines) instead of scanning all 102 lists
    assert 0.2 < calibration["recall_at_k"] < 0.95 and settings["nprobe"] < 102 / 4
    # the default re-ranks 10 x k rows exactly, and is calibrated that way: measured held-out 0.972
    _, reranked = build_index(base, "ivfpq")
    assert reranked["refine"] == 10 and reranked["calibration"]["recall_at_k"] >= 0.95
    assert reconstruct_all(index).shape == (n, 64)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_save_load_gives_identical_results(tmp_path, kind):
    rng = np.random.default_rng(1)
    base, queries = _unit(rng.standard_normal((400, 16))), _unit(rng.standard_normal((20, 16)))
    index, settings = build_index(base, kind, nprobe=3, ef_search=40)
    before = search(index, queries, 7)
    save_index(index, tmp_path / "index.faiss")
    loaded = load_index(tmp_path / "index.faiss")
    after = search(loaded, queries, 7)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    if kind in ("ivf", "ivfpq"):
        assert loaded.nprobe == 3
    if kind == "hnsw":
        assert loaded.hnsw.efSearch == 40
    with pytest.raises(OutputExistsError):
        save_index(index, tmp_path / "index.faiss")
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temporary left behind


def test_refusals(tmp_path):
    with pytest.raises(InputError, match="not L2-normalised"):
        build_index(np.array([[3.0, 4.0]], np.float32))
    with pytest.raises(InputError, match="zero vectors"):
        build_index(np.zeros((0, 4), np.float32))
    with pytest.raises(InputError, match="index kind 'lsh'"):
        build_index(np.eye(2, dtype=np.float32), "lsh")
    index, _ = build_index(np.eye(3, dtype=np.float32))
    with pytest.raises(InputError, match="dimension 2"):
        search(index, np.array([[1.0, 0.0]], np.float32), 1)
    (tmp_path / "junk.faiss").write_bytes(b"not an index")
    with pytest.raises(InputError, match="not a readable Faiss index"):
        load_index(tmp_path / "junk.faiss")
