"""Splits: the paper's presets (hand-computed), k-fold, JSON round trip and validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragsam.data.splits import Splits, kfold, paper_split, save_splits
from ragsam.errors import InputError, OutputExistsError

BTCV_IDS = [f"{i:04d}" for i in [*range(1, 11), *range(21, 41)]]  # the 30 BTCV training scans


def test_btcv_community_split_24_6() -> None:
    split = paper_split(reversed(BTCV_IDS), "BTCV")
    assert split["test"] == ["0035", "0036", "0037", "0038", "0039", "0040"]
    assert split["train"] == [f"{i:04d}" for i in [*range(1, 11), *range(21, 35)]]
    assert split == paper_split(BTCV_IDS, "btcv", strict=True)
    named = paper_split([f"img{c}" for c in BTCV_IDS], "btcv", strict=True)
    assert named["test"] == [f"img{i:04d}" for i in range(35, 41)]


def test_btcv_community_split_partial_and_strict() -> None:
    # Some of 0035-0040 present: those are the test cases.
    assert paper_split(["0001", "0002", "0036"], "btcv") == {"train": ["0001", "0002"], "test": ["0036"]}
    # None present: the evenly spaced rule with the 6/30 fraction (here 1 of 3, position 1).
    assert paper_split(["0001", "0002", "0003"], "btcv") == {"train": ["0001", "0003"], "test": ["0002"]}
    with pytest.raises(InputError, match="needs the 30 labelled cases"):
        paper_split(BTCV_IDS[:29], "btcv", strict=True)
    with pytest.raises(InputError, match="nothing is left to train on"):
        paper_split(["0035", "0036"], "btcv")


def test_btcv_even_split_24_6() -> None:
    split = paper_split(reversed(BTCV_IDS), "btcv-even")
    assert split["test"] == ["0003", "0008", "0023", "0028", "0033", "0038"]
    assert len(split["train"]) == 24 and set(split["train"]) | set(split["test"]) == set(BTCV_IDS)
    assert split == paper_split(BTCV_IDS, "btcv-even", strict=True)


def test_btcv_split_of_a_fake_btcv_folder_puts_0035_to_0040_in_test(tmp_path: Path) -> None:
    from ragsam.data.layouts import discover_cases
    from ragsam.data.prepare import make_splits

    base = tmp_path / "RawData" / "Training"
    (base / "img").mkdir(parents=True)
    (base / "label").mkdir()
    for cid in BTCV_IDS:
        (base / "img" / f"img{cid}.nii.gz").write_bytes(b"")
        (base / "label" / f"label{cid}.nii.gz").write_bytes(b"")
    ids = [c.case_id for c in discover_cases(tmp_path, "auto")]
    assert len(ids) == 30
    splits, names = make_splits(ids, "auto", seed=0, datasets=("btcv",))
    assert splits["test"] == ["0035", "0036", "0037", "0038", "0039", "0040"]
    assert len(splits["train"]) == 24 and names["0035"] == "test" and names["0034"] == "train"
    assert make_splits(ids, "btcv-even", seed=0)[0]["test"][0] == "0003"


def test_flare22_paper_split_30_20() -> None:
    ids = [f"FLARE22_Tr_{i:04d}" for i in range(1, 51)]
    split = paper_split(ids, "flare22")
    positions = [1, 3, 6, 8, 11, 13, 16, 18, 21, 23, 26, 28, 31, 33, 36, 38, 41, 43, 46, 48]
    assert split["test"] == [ids[p] for p in positions]
    assert len(split["train"]) == 30 and not set(split["train"]) & set(split["test"])


def test_fewer_cases_fallback_and_strict() -> None:
    ids = [f"c{i:02d}" for i in range(10)]
    # round(10 * 6 / 30) = 2 test cases at positions floor(2.5), floor(7.5).
    assert paper_split(ids, "btcv-even")["test"] == ["c02", "c07"]
    # round(3 * 20 / 50) = 1 test case at position floor(1.5).
    assert paper_split(ids[:3], "flare22") == {"train": ["c00", "c02"], "test": ["c01"]}
    with pytest.raises(InputError, match="needs 30 labelled cases, got 10"):
        paper_split(ids, "btcv-even", strict=True)
    with pytest.raises(InputError, match="at least 2 labelled cases, got 1"):
        paper_split(ids[:1], "btcv")
    with pytest.raises(InputError, match="no paper split for dataset 'amos'"):
        paper_split(ids, "amos")
    with pytest.raises(InputError, match="duplicate case ids: c01"):
        paper_split(["c01", "c01", "c02"], "btcv")


def test_kfold_partitions_and_is_seeded() -> None:
    ids = [f"c{i}" for i in range(7)]
    folds = kfold(ids, 3, seed=4)
    vals = [f["val"] for f in folds]
    assert sorted(c for v in vals for c in v) == sorted(ids)  # every case validated exactly once
    assert sorted(len(v) for v in vals) == [2, 2, 3]
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == sorted(ids)
    assert kfold(reversed(ids), 3, seed=4) == folds
    assert kfold(ids, 3, seed=5) != folds
    with pytest.raises(InputError, match="2 <= k <= number of cases \\(7\\), got k=8"):
        kfold(ids, 8)


def test_save_load_round_trip_and_validation(tmp_path: Path) -> None:
    splits = {**paper_split(BTCV_IDS, "btcv-even"), "folds": kfold(BTCV_IDS, 5)}
    path = save_splits(tmp_path / "splits.json", splits)
    assert Splits.read(path, case_ids=BTCV_IDS).to_json() == splits
    with pytest.raises(OutputExistsError):
        save_splits(path, splits)
    with pytest.raises(InputError, match=r"'train' names unknown case ids \['0002', '0004'"):
        Splits.read(path, case_ids=["0001"])
    bad = tmp_path / "bad.json"
    for content, message in [
        ({"train": ["a", "b"], "test": ["b"]}, "in both train and test: ['b']"),
        ({"train": ["a", "a"]}, "repeats case ids ['a']"),
        ({"test": ["a"]}, 'with a "train" list'),
        ({"train": ["a"], "folds": [{"train": ["a"], "val": ["a"]}]}, "fold 0: case ids in both"),
    ]:
        bad.write_text(json.dumps(content))
        with pytest.raises(InputError) as err:
            Splits.read(bad)
        assert err.value.path == str(bad) and message in err.value.problem
    with pytest.raises(InputError, match="in both train and test"):
        save_splits(tmp_path / "x.json", {"train": ["a"], "test": ["a"]})
    assert not (tmp_path / "x.json").exists()


def test_splits_reader_types_the_file_and_refuses_a_newer_version(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(InputError, match="missing; run `ragsam prepare` again"):
        Splits.read(cache)
    save_splits(cache / "splits.json", {"train": ["0002", "0001"], "test": ["0003"], "extra": ["0004"]})
    splits = Splits.read(cache)  # a prepared cache folder or the file itself
    assert (splits.train, splits.test, splits.named["extra"], splits.folds) == (["0002", "0001"], ["0003"],
                                                                                ["0004"], [])
    assert splits.names() == ["train", "test", "extra"] and splits.format_version == 1
    assert Splits.read(cache / "splits.json") == splits
    (cache / "splits.json").write_text(json.dumps({"format_version": 2, "train": ["a"]}))
    with pytest.raises(InputError, match="format version 2 is written by a newer ragsam"):
        Splits.read(cache)
