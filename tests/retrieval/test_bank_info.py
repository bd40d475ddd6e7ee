"""``BankInfo``: bank.json round trips, versions and refusals."""

from __future__ import annotations

import json

import pytest

from ragsam.errors import InputError
from ragsam.retrieval.bank_info import BankInfo

# bank.json as the current ragsam writes it, key order included
CURRENT = {
    "format": "ragsam-support-bank", "version": 1, "prepared_dir": "/work/prepared",
    "prepared_dir_relative": "../prepared", "prepare_sha256": "ab" * 32, "case_keys": {"a": "k1"},
    "slice_size": 64, "kind": "flat", "dim": 384, "count": 20, "cases": ["a", "b"],
    "case_depths": {"a": 12, "b": 8}, "labelled_cases": ["a"],
    "settings": {"labelled_only": False, "split": "train", "batch_size": 32, "pooling": "cls", "image_size": 224,
                 "index": {"kind": "flat", "nprobe": None}},
    "created": "2026-12-02T06:00:00+00:00",
}


def test_round_trip_keeps_the_file(tmp_path) -> None:
    info = BankInfo.from_json(CURRENT)
    assert (info.kind, info.dim, info.count, info.slice_size) == ("flat", 384, 20, 64)
    assert info.case_depths == {"a": 12, "b": 8} and info.labelled_cases == ["a"]
    assert info.index_settings == {"kind": "flat", "nprobe": None}
    assert json.dumps(info.to_json()) == json.dumps(CURRENT)
    info.write(tmp_path)
    assert BankInfo.read(tmp_path) == info


def test_versions_and_refusals(tmp_path) -> None:
    with pytest.raises(InputError, match="not a support bank \\(bank.json missing\\)"):
        BankInfo.read(tmp_path)
    (tmp_path / "bank.json").write_text(json.dumps({k: v for k, v in CURRENT.items() if k != "version"}))
    assert BankInfo.read(tmp_path).format_version == 1
    (tmp_path / "bank.json").write_text(json.dumps({**CURRENT, "version": 2}))
    with pytest.raises(InputError, match=r"bank.json: format version 2 is written by a newer ragsam \(this ragsam "
                                         r"reads 1\); rebuild the bank with `ragsam index build --force`"):
        BankInfo.read(tmp_path)
    (tmp_path / "bank.json").write_text(json.dumps({**CURRENT, "format": "x"}))
    with pytest.raises(InputError, match="not a ragsam support bank"):
        BankInfo.read(tmp_path)
    (tmp_path / "bank.json").write_text(json.dumps({**CURRENT, "dim": "wide"}))
    with pytest.raises(InputError, match="malformed bank description"):
        BankInfo.read(tmp_path)
