"""Support bank: build over a prepared cache, query, filters, z prior, refusals, support slices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bank_fixtures import synthetic_cases, write_prepared

from ragsam.errors import InputError, OutputExistsError
from ragsam.retrieval.bank import BankOptions, SupportBank, build_bank
from ragsam.retrieval.embedder import build_embedder
from ragsam.retrieval.faiss_index import build_index, reconstruct_all

EMBEDDER = {"embedder_weights": "tiny", "image_size": 28}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """3 labelled cases x 6 slices (case2 in the test split) and a flat bank over all of them."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bank")
    cases = synthetic_cases(3, depth=6, size=32)
    prepared = write_prepared(root / "prepared", cases, splits={"case2": "test"})
    summary = build_bank(prepared, root / "bank", BankOptions(**EMBEDDER))
    return {"root": root, "cases": cases, "prepared": prepared, "bank": root / "bank", "summary": summary,
            "embedder": build_embedder("tiny", image_size=28)}


def _query_vec(built: dict, case: str, z: int) -> np.ndarray:
    return built["embedder"].embed(built["cases"][case][0][z:z + 1])


def test_build_writes_the_bank_folder(built):
    s = built["summary"]
    assert (s.count, s.cases, s.dim, s.kind, s.embedder) == (18, 3, 32, "flat", "tiny")
    assert sorted(p.name for p in built["bank"].iterdir()) == ["bank.json", "embedder.json", "embeddings.npy",
                                                               "index.faiss", "metadata.csv"]
    lines = (built["bank"] / "metadata.csv").read_text().splitlines()
    assert lines[0] == "row,case_id,z,rel_z,organs,split"
    assert lines[1] == "0,case0,0,0.0,6,train"  # organ 6 only in z <= 3, organ 1 from z >= 2
    assert lines[3] == "2,case0,2,0.4,1;6,train"
    assert lines[18] == "17,case2,5,1.0,1,test"
    info = json.loads((built["bank"] / "bank.json").read_text())
    assert info["prepared_dir"] == str(built["prepared"].resolve()) and info["count"] == 18
    assert json.loads((built["bank"] / "embedder.json").read_text()) == built["embedder"].identity


def test_embeddings_are_memory_mapped_and_banks_without_them_still_load(built, tmp_path):
    bank = SupportBank.load(built["bank"])
    assert isinstance(bank.embeddings, np.memmap) and bank.embeddings.dtype == np.float32
    everything = np.concatenate([built["embedder"].embed(built["cases"][c][0]) for c in ("case0", "case1", "case2")])
    np.testing.assert_allclose(bank.embeddings, everything, atol=1e-6)  # row i = slice i of metadata.csv
    np.testing.assert_array_equal(bank.vectors(), reconstruct_all(bank.index))  # flat: the same vectors
    old = tmp_path / "old-bank"  # a bank built before embeddings.npy existed
    shutil.copytree(built["bank"], old)
    (old / "embeddings.npy").unlink()
    legacy = SupportBank.load(old)
    assert legacy.embeddings is None
    np.testing.assert_array_equal(legacy.vectors(), bank.vectors())
    vec = _query_vec(built, "case0", 1)
    assert legacy.query(vec, 5, built["embedder"].identity) == bank.query(vec, 5, built["embedder"].identity)
    np.save(old / "embeddings.npy", everything[:5])
    with pytest.raises(InputError, match=r"embeddings.npy: holds float32 \(5, 32\); expected float32 \(18, 32\)"):
        SupportBank.load(old)


def test_a_slice_finds_itself_first_and_scores_match_brute_force(built):
    bank = SupportBank.load(built["bank"])
    vec = _query_vec(built, "case1", 3)
    hits = bank.query(vec, 18, built["embedder"].identity)[0]
    assert (hits[0].case_id, hits[0].z, hits[0].row) == ("case1", 3, 9)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].organs == (1, 6) and hits[0].rel_z == pytest.approx(0.6)
    everything = np.concatenate([built["embedder"].embed(built["cases"][c][0]) for c in ("case0", "case1", "case2")])
    brute = everything @ vec[0]
    assert [h.row for h in hits] == list(np.lexsort((np.arange(18), -brute)))
    np.testing.assert_allclose([h.similarity for h in hits], np.sort(brute)[::-1], atol=1e-5)


def test_exclusion_removes_the_whole_case_and_organ_filter(built):
    bank = SupportBank.load(built["bank"])
    ident = built["embedder"].identity
    hits = bank.query(_query_vec(built, "case1", 3), 12, ident, exclude_cases={"case1"})[0]
    assert {h.case_id for h in hits} == {"case0", "case2"} and len(hits) == 12
    hits = bank.query(_query_vec(built, "case1", 3), 6, ident, require_organs=[1, 6])[0]
    assert sorted((h.case_id, h.z) for h in hits) == [(c, z) for c in ("case0", "case1", "case2") for z in (2, 3)]
    hits = bank.query(_query_vec(built, "case0", 0), 2, ident, exclude_cases=["case0"], require_organs=[6])[0]
    assert all(h.case_id != "case0" and 6 in h.organs for h in hits)


def test_saved_bank_moved_with_its_cache_gives_identical_results(built, tmp_path):
    vecs = np.concatenate([_query_vec(built, "case0", 1), _query_vec(built, "case2", 4)])
    ident = built["embedder"].identity
    before = SupportBank.load(built["bank"]).query(vecs, 5, ident, z_prior=0.3, query_rel_z=[0.2, 0.8])
    moved = tmp_path / "moved"
    shutil.copytree(built["root"] / "prepared", moved / "prepared")
    shutil.copytree(built["bank"], moved / "bank")
    (moved / "bank" / "bank.json").write_text((moved / "bank" / "bank.json").read_text().replace(
        str(built["prepared"].resolve()), str(tmp_path / "gone")))  # the recorded absolute path is stale
    bank = SupportBank.load(moved / "bank")
    assert bank.prepared_dir == (moved / "prepared").resolve()
    after = bank.query(vecs, 5, ident, z_prior=0.3, query_rel_z=[0.2, 0.8])
    assert after == before


def test_refusals(built, tmp_path):
    bank = SupportBank.load(built["bank"])
    vec = _query_vec(built, "case1", 3)
    other = build_embedder("tiny", image_size=28, seed=1)
    with pytest.raises(InputError, match="bank embedder 'tiny' differs from query embedder 'tiny'.*weights_sha256"):
        bank.query(other.embed(built["cases"]["case1"][0][:1]), 3, other.identity)
    with pytest.raises(InputError, match="k=19 must be between 1 and the bank size"):
        bank.query(vec, 19, built["embedder"].identity)
    with pytest.raises(InputError, match="k=13 but only 12 of 18 slices remain"):
        bank.query(vec, 13, built["embedder"].identity, exclude_cases=["case2"])
    with pytest.raises(InputError, match="only 0 of 18"):
        bank.query(vec, 1, built["embedder"].identity, require_organs=[13])
    with pytest.raises(InputError, match="needs query_rel_z"):
        bank.query(vec, 1, built["embedder"].identity, z_prior=0.5)
    with pytest.raises(OutputExistsError):
        build_bank(built["prepared"], built["bank"], BankOptions(**EMBEDDER))

    unlabelled = {c: (images, None) for c, (images, _) in synthetic_cases(1, depth=2, size=32).items()}
    with pytest.raises(InputError, match="no labelled cases"):
        build_bank(write_prepared(tmp_path / "nolabels", unlabelled), tmp_path / "b1", BankOptions(**EMBEDDER))
    assert not (tmp_path / "b1").exists()

    empty = tmp_path / "empty"
    shutil.copytree(built["bank"], empty)
    import faiss

    faiss.write_index(faiss.IndexFlatIP(32), str(empty / "index.faiss"))
    (empty / "metadata.csv").write_text("row,case_id,z,rel_z,organs,split\n")
    with pytest.raises(InputError, match="empty"):
        SupportBank.load(empty)
    with pytest.raises(InputError, match="not a support bank"):
        SupportBank.load(tmp_path)


def _hand_bank(cosines: list[float], rel_z: list[float], tmp_path: Path) -> tuple[SupportBank, np.ndarray]:
    """A bank whose row i has cosine ``cosines[i]`` to the query e0 (vectors in the e0/e1 plane)."""
    c = np.asarray(cosines)
    vectors = np.zeros((len(c), 4), np.float32)
    vectors[:, 0], vectors[:, 1] = c, np.sqrt(1 - c**2)
    index, _ = build_index(vectors, "flat")
    n = len(c)
    bank = SupportBank(tmp_path, index, {"kind": "flat"}, {"weights_sha256": "x"}, np.array([f"c{i}" for i in range(n)]),
                       np.zeros(n, np.int64), np.asarray(rel_z, float), [(1,)] * n, tmp_path)
    return bank, np.array([[1, 0, 0, 0]], np.float32)


def test_z_prior_reranks_as_hand_computed(tmp_path):
    bank, q = _hand_bank([0.9, 0.8, 0.7], [0.9, 0.5, 0.45], tmp_path)
    plain = bank.query(q, 3, {"weights_sha256": "x"})[0]
    assert [h.row for h in plain] == [0, 1, 2]
    ranked = bank.query(q, 3, {"weights_sha256": "x"}, z_prior=0.5, query_rel_z=0.5)[0]
    # 0.9 - 0.5*0.4 = 0.70 ; 0.8 - 0 = 0.80 ; 0.7 - 0.5*0.05 = 0.675
    assert [h.row for h in ranked] == [1, 0, 2]
    np.testing.assert_allclose([h.score for h in ranked], [0.8, 0.7, 0.675], atol=1e-6)
    np.testing.assert_allclose([h.similarity for h in ranked], [0.8, 0.9, 0.7], atol=1e-6)


def test_z_prior_widens_the_search_until_exact(tmp_path):
    # 100 near-duplicates at the wrong height, one weaker match at the right one: the first
    # search fetches 64 rows, all at the wrong height, so it must widen to find row 100
    bank, q = _hand_bank([0.95] * 100 + [0.5], [0.0] * 100 + [1.0], tmp_path)
    hit = bank.query(q, 1, {"weights_sha256": "x"}, z_prior=1.0, query_rel_z=1.0)[0][0]
    assert hit.row == 100 and hit.score == pytest.approx(0.5, abs=1e-6)  # 0.95 - 1.0 = -0.05 < 0.5


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_the_slice_itself(built, tmp_path, kind):
    build_bank(built["prepared"], tmp_path / kind, BankOptions(kind=kind, **EMBEDDER))
    bank = SupportBank.load(tmp_path / kind)
    assert bank.kind == kind
    hits = bank.query(_query_vec(built, "case2", 5), 4, built["embedder"].identity, exclude_cases=["case0"])[0]
    assert (hits[0].case_id, hits[0].z) == ("case2", 5) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 4 and all(h.case_id != "case0" for h in hits)


def test_ivfpq_bank_reranks_to_the_flat_neighbours(built, tmp_path):
    """18 slices: one IVF list, so refine x k >= 18 makes the shortlist the whole bank and
    the re-ranked answer is exact search; a shorter shortlist reads only its rows."""
    build_bank(built["prepared"], tmp_path / "pq", BankOptions(kind="ivfpq", **EMBEDDER))
    bank, flat = SupportBank.load(tmp_path / "pq"), SupportBank.load(built["bank"])
    assert (bank.kind, bank.refine, bank.info.index_settings["refine"], bank.index.nlist) == ("ivfpq", 10, 10, 1)
    assert isinstance(bank.embeddings, np.memmap)
    identity = built["embedder"].identity
    for case, z in (("case0", 1), ("case1", 4), ("case2", 5)):
        vec = _query_vec(built, case, z)
        hits, truth = bank.query(vec, 4, identity)[0], flat.query(vec, 4, identity)[0]
        assert [h.row for h in hits] == [h.row for h in truth]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in truth], atol=1e-6)
        np.testing.assert_allclose([h.score for h in hits], bank.embeddings[[h.row for h in hits]] @ vec[0], atol=1e-6)
        assert [(h.case_id, h.z) for h in bank.query(vec, 3, identity, exclude_cases=[case])[0]] == [
            (h.case_id, h.z) for h in flat.query(vec, 3, identity, exclude_cases=[case])[0]]
    short = SupportBank.load(tmp_path / "pq", refine=2)  # shortlist 2 x k rows of 18
    assert short.refine == 2
    reads: list[np.ndarray] = []

    class Recorder(np.memmap):
        def __getitem__(self, key):
            reads.append(np.array(key, copy=True))
            return super().__getitem__(key)

    short.embeddings = short.embeddings.view(Recorder)
    vec = _query_vec(built, "case1", 3)
    hit = short.query(vec, 3, identity)[0]
    assert len(reads) == 1 and len(set(reads[0].tolist())) == 6 and {h.row for h in hit} <= set(reads[0].tolist())
    with pytest.raises(InputError, match="refine 0 must be at least 1"):
        SupportBank.load(tmp_path / "pq", refine=0)


def test_support_slices_read_the_cache_and_notice_changes(built, tmp_path):
    bank = SupportBank.load(built["bank"])
    hits = bank.query(_query_vec(built, "case1", 3), 3, built["embedder"].identity, exclude_cases=["case1"])[0]
    images, labels = bank.support_slices(hits)
    assert images.shape == (3, 32, 32) and images.dtype == np.float32 and labels.dtype == np.uint8
    for i, h in enumerate(hits):
        np.testing.assert_array_equal(images[i], built["cases"][h.case_id][0][h.z].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(labels[i], built["cases"][h.case_id][1][h.z])
    assert bank.embedder().identity == built["embedder"].identity

    copy = tmp_path / "prepared"
    shutil.copytree(built["prepared"], copy)
    meta = json.loads((copy / "prepare.json").read_text())
    meta["cases"]["case0"]["key"] = "rebuilt"
    (copy / "prepare.json").write_text(json.dumps(meta))
    moved = SupportBank.load(built["bank"], prepared_dir=copy)
    every = moved.query(_query_vec(built, "case2", 0), 18, built["embedder"].identity)[0]
    moved.support_slices([h for h in every if h.case_id != "case0"][:2])  # unchanged cases still serve
    with pytest.raises(InputError, match=r"cases \['case0'\] of the prepared cache changed"):
        moved.support_slices([h for h in every if h.case_id == "case0"][:1])


def test_split_selection(built, tmp_path):
    summary = build_bank(built["prepared"], tmp_path / "train", BankOptions(split="train", **EMBEDDER))
    assert summary.cases == 2 and summary.count == 12
    bank = SupportBank.load(tmp_path / "train")
    assert set(bank.case_ids) == {"case0", "case1"}
    with pytest.raises(InputError, match="no case has split 'val'"):
        build_bank(built["prepared"], tmp_path / "val", BankOptions(split="val", **EMBEDDER))


def test_second_writer_refused_and_dead_build_cleared(built, tmp_path):
    from ragsam.utils.locking import FolderLockedError, folder_lock

    out = tmp_path / "bank"
    with folder_lock(out), pytest.raises(FolderLockedError, match="in use by another ragsam process"):
        build_bank(built["prepared"], out, BankOptions(**EMBEDDER))
    (tmp_path / ".bank.k9k9.tmp").mkdir()  # what a build killed before its swap leaves
    build_bank(built["prepared"], out, BankOptions(**EMBEDDER))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]
    assert (out / "metadata.csv").read_bytes() == (built["bank"] / "metadata.csv").read_bytes()


def test_index_build_refine_option_is_stored_and_refused_where_it_means_nothing(built, tmp_path, capsys):
    from ragsam.cli.main import run_cli

    common = ["index", "build", str(built["prepared"]), "--embedder", "tiny", "--image-size", "28"]
    assert run_cli([*common, "-o", str(tmp_path / "pq3"), "--kind", "ivfpq", "--refine", "3"]) == 0
    bank = SupportBank.load(tmp_path / "pq3")
    assert (bank.kind, bank.refine, bank.info.index_settings["refine"]) == ("ivfpq", 3, 3)
    capsys.readouterr()
    assert run_cli([*common, "-o", str(tmp_path / "flat"), "--kind", "flat", "--refine", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refine applies to --kind ivfpq only" in err[0]
    assert run_cli([*common, "-o", str(tmp_path / "pq0"), "--kind", "ivfpq", "--refine", "0"]) == 2
    assert "refine 0 must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "flat").exists() and not (tmp_path / "pq0").exists()
