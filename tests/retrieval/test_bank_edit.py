"""Growing a support bank in place (ragsam.retrieval.bank_edit)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from bank_fixtures import synthetic_cases, write_prepared

from ragsam.errors import InputError
from ragsam.retrieval.bank import BankOptions, SupportBank, build_bank
from ragsam.retrieval.bank_edit import add_slices, list_additions, recover_bank, remove_addition
from ragsam.retrieval.bank_info import BankInfo
from ragsam.retrieval.faiss_index import reconstruct_all


@pytest.fixture()
def bank(tmp_path):
    torch.manual_seed(0)
    prepared = write_prepared(tmp_path / "prepared", synthetic_cases(2, depth=4, size=32))
    return build_bank(prepared, tmp_path / "bank", BankOptions(embedder_weights="tiny", image_size=28)).path


def _new_slices(seed: int = 5):
    rng = np.random.default_rng(seed)
    images = rng.random((2, 32, 32)).astype(np.float32)
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[0, 3:9, 3:9] = 1
    labels[1, 10:20, 10:20] = 2
    return images, labels


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_added_slices_are_retrieved_and_served_as_supports(bank):
    before = SupportBank.load(bank)
    images, labels = _new_slices()
    added = add_slices(bank, images, labels, "scan.nii.gz", [7, 8], [0.25, 0.5], added_by="tester")
    assert added.id == "added-0001" and added.organs == [1, 2] and added.added_by == "tester"
    grown = SupportBank.load(bank)
    assert len(grown) == len(before) + 2
    assert grown.case_ids[-2:].tolist() == ["added-0001"] * 2 and grown.z[-2:].tolist() == [0, 1]
    assert grown.rel_z[-2:].tolist() == [0.25, 0.5] and grown.organs[-2:] == [(1,), (2,)]
    # the old rows are untouched; the new slice is its own nearest neighbour
    assert np.array_equal(reconstruct_all(grown.index)[:len(before)], reconstruct_all(before.index))
    embedder = grown.embedder()
    vector = embedder.embed(images[1:].astype(np.float16).astype(np.float32))
    # embeddings.npy grows with the index: old rows kept, the new ones appended
    assert grown.embeddings.shape == (len(before) + 2, 32)
    np.testing.assert_array_equal(grown.embeddings[:len(before)], before.embeddings)
    np.testing.assert_allclose(grown.embeddings[-1:], vector, atol=1e-6)
    np.testing.assert_array_equal(grown.embeddings, reconstruct_all(grown.index))
    hit = grown.query(vector, 1, embedder.identity)[0][0]
    assert (hit.case_id, hit.z) == ("added-0001", 1) and hit.similarity == pytest.approx(1.0, abs=1e-5)
    got_images, got_labels = grown.support_slices([hit])
    assert np.array_equal(got_images[0], images[1].astype(np.float16).astype(np.float32))
    assert np.array_equal(got_labels[0], labels[1])
    [listed] = list_additions(bank)
    assert listed == added and listed.source == "scan.nii.gz" and listed.source_slices == [7, 8]


def test_remove_restores_the_built_bank(bank):
    original = _files(bank)
    first = add_slices(bank, *_new_slices(1), "a", [0, 1], [0.0, 1.0])
    second = add_slices(bank, *_new_slices(2), "b", [3, 4], [0.3, 0.4])
    assert [a.id for a in list_additions(bank)] == ["added-0001", "added-0002"]
    remove_addition(bank, first.id)
    remaining = SupportBank.load(bank)
    assert remaining.case_ids[-2:].tolist() == [second.id] * 2
    assert np.array_equal(remaining.support_slices(remaining.query(
        remaining.embedder().embed(_new_slices(2)[0][:1].astype(np.float16).astype(np.float32)), 1,
        remaining.embedder().identity)[0])[1][0], _new_slices(2)[1][0])
    remove_addition(bank, second.id)
    now = _files(bank)
    assert now[next(p for p in now if p.name == "index.faiss")] == original[next(p for p in original
                                                                               if p.name == "index.faiss")]
    assert now[next(p for p in now if p.name == "metadata.csv")] == original[next(p for p in original
                                                                                if p.name == "metadata.csv")]
    assert now[next(p for p in now if p.name == "embeddings.npy")] == original[next(p for p in original
                                                                                  if p.name == "embeddings.npy")]
    assert not any("additions" in str(p) for p in now)
    # ids are never reused, so a cache keyed by (case id, z) cannot serve a removed slice
    assert add_slices(bank, *_new_slices(3), "c", [0, 1], [0.0, 1.0]).id == "added-0003"
    with pytest.raises(InputError, match="no addition 'added-0001'"):
        remove_addition(bank, "added-0001")


def test_a_crash_during_an_addition_leaves_the_bank_as_it_was(bank, monkeypatch):
    original = _files(bank)

    def crash(*args, **kwargs):
        raise RuntimeError("disk died")

    monkeypatch.setattr(BankInfo, "write", crash)  # bank.json: after the index and metadata were written
    with pytest.raises(RuntimeError, match="disk died"):
        add_slices(bank, *_new_slices(), "x", [0, 1], [0.0, 1.0])
    assert _files(bank) == original
    assert not [p for p in bank.parent.iterdir() if p.name.startswith(".bank.") and p.is_dir()]


def test_concurrent_additions_are_serialised(bank):
    base = len(SupportBank.load(bank))
    errors = []

    def add(seed):
        try:
            add_slices(bank, *_new_slices(seed), f"s{seed}", [0, 1], [0.0, 1.0])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    grown = SupportBank.load(bank)
    assert len(grown) == base + 6
    assert sorted(a.id for a in list_additions(bank)) == ["added-0001", "added-0002", "added-0003"]
    assert grown.case_ids[base:].tolist() == [c for c in ("added-0001", "added-0002", "added-0003") for _ in (0, 1)]


def test_interrupted_swap_is_recovered(bank):
    aside = bank.with_name(f".{bank.name}.old-123")
    bank.rename(aside)
    assert recover_bank(bank) and bank.is_dir() and not aside.exists()
    assert not recover_bank(bank)


def test_refusals(bank):
    images, labels = _new_slices()
    with pytest.raises(InputError, match=r"do not fit the bank's \(32, 32\) slices"):
        add_slices(bank, images[:, :16], labels[:, :16], "x", [0, 1], [0.0, 1.0])
    bad = labels.copy()
    bad[0, 0, 0] = 99  # outside the BTCV map the fixture writes (ids 0-13)
    with pytest.raises(InputError, match=r"label ids \[99\] are not in the bank's label map"):
        add_slices(bank, images, bad, "x", [0, 1], [0.0, 1.0])
    with pytest.raises(InputError, match="hold no organ label"):
        add_slices(bank, images, np.zeros_like(labels), "x", [0, 1], [0.0, 1.0])
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        add_slices(bank, images * 3, labels, "x", [0, 1], [0.0, 1.0])
    assert list_additions(bank) == []
