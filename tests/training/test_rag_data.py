"""Episodes of ``ragsam train-rag``: supports never come from the query's own case, and match `segment`'s."""

from __future__ import annotations

import numpy as np
import pytest
from rag_fixtures import RUN_BASE, write_phantom_bank

from ragsam.errors import InputError
from ragsam.retrieval.bank_build import case_arrays
from ragsam.retrieval.support_retrieval import retrieve_supports
from ragsam.training.rag_config import load_rag_config
from ragsam.training.rag_data import build_episodes


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return write_phantom_bank(tmp_path_factory.mktemp("ragdata"))


def _cfg(bank, *extra):
    return load_rag_config(None, [f"data.bank={bank}", *RUN_BASE, "data.k=2", *extra])


def test_an_episode_never_takes_a_support_from_the_querys_own_case(bank):
    data = build_episodes(_cfg(bank, "data.train=['0001','0002']", "data.val=['0003']"))
    ids = data.bank.case_ids  # the bank's own record of each row's case
    assert len(data.dataset) == 15 and len(data.train_indices) == 10 and list(data.val_cases) == ["0003"]
    for ep in data.dataset.episodes:
        assert len(ep.supports) == 2
        assert all(ids[row] != ep.case_id for row in ep.support_rows)
        assert [(str(ids[r]), int(data.bank.z[r])) for r in ep.support_rows] == list(ep.supports)
    assert data.dataset.episodes[data.val_cases["0003"][0]].case_id == "0003"
    assert data.num_classes == 13  # the cache's BTCV label map


def test_supports_are_segments_retrieval_in_frame_order_and_items_stack_them(bank):
    data = build_episodes(_cfg(bank, "data.train=['0002']"))
    images, labels = case_arrays(data.bank.prepared_dir, "0002")
    hits = retrieve_supports(data.bank, data.bank.embedder(), np.asarray(images, np.float32), 2, {"0002"}, 0.5)
    assert [ep.supports for ep in data.dataset.episodes] == [tuple((h.case_id, h.z) for h in hs) for hs in hits]
    assert hits[0][-1].score >= hits[0][0].score  # best neighbour last, nearest the query frame
    item = data.dataset[3]
    assert item["image"].shape == (3, 32, 32) and item["label"].shape == (3, 32, 32)
    assert np.array_equal(item["label"][0].numpy(), labels[3])
    sup_case, sup_z = data.dataset.episodes[3].supports[1]
    assert np.array_equal(item["image"][2].numpy(), np.asarray(case_arrays(data.bank.prepared_dir, sup_case)[0][sup_z],
                                                                 np.float32))


def test_holdout_slices_validate_and_a_bank_of_only_the_query_case_is_refused(bank, tmp_path):
    data = build_episodes(_cfg(bank, "data.train=['0001']", "data.holdout=every:2"))
    assert [data.dataset.episodes[i].z for i in data.val_cases["0001:holdout"]] == [1, 3]
    assert [data.dataset.episodes[i].z for i in data.train_indices] == [0, 2, 4]
    from ragsam.retrieval.bank import BankOptions, build_bank

    build_bank(bank.parent / "prep", tmp_path / "one", BankOptions(embedder_weights="tiny", image_size=28, cases=["0001"]))
    with pytest.raises(InputError, match="remain after excluding cases"):
        build_episodes(_cfg(tmp_path / "one", "data.train=['0001']"))
    with pytest.raises(InputError, match="no support bank"):
        build_episodes(load_rag_config(None, ["model.weights=tiny"]))
