"""``index build`` under two gloo ranks (torchrun) writes the bank one process writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from bank_fixtures import synthetic_cases, write_prepared

from ragsam.retrieval.bank_build import BankOptions, build_bank
from two_ranks import run_ranks

SETTINGS = {"embedder_weights": "tiny", "image_size": 28, "batch_size": 4}  # 6 slices a case: chunks of 4 and 2


def _build(prepared: str, out: str) -> tuple:
    torch.manual_seed(0)
    s = build_bank(prepared, out, BankOptions(**SETTINGS))
    return (s.count, s.cases, s.dim, s.kind, s.embedder)


def test_two_gloo_ranks_write_the_bank_one_process_writes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    prepared = write_prepared(tmp_path / "prepared", synthetic_cases(3, depth=6, size=32))
    one = _build(str(prepared), str(tmp_path / "one"))
    results = run_ranks(_build, str(prepared), str(tmp_path / "two"))
    assert results == {0: ("ok", one), 1: ("ok", one)}
    assert one == (18, 3, 32, "flat", "tiny")
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in names:
        a, b = (tmp_path / "one" / name).read_bytes(), (tmp_path / "two" / name).read_bytes()
        if name == "bank.json":  # the creation time differs; everything else is equal
            a, b = (json.loads(x) for x in (a, b))
            a.pop("created"), b.pop("created")
        assert a == b, name
