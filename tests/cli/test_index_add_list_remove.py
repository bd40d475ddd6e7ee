"""``ragsam index add|list|remove`` on a bank built from a synthetic cache, adding slices of the real 3 mm CT."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ragsam.cli.main import run_cli


@pytest.fixture()
def bank(tmp_path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "bank_fixtures", Path(__file__).resolve().parents[1] / "retrieval" / "bank_fixtures.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    torch.manual_seed(0)
    prepared = fixtures.write_prepared(tmp_path / "prepared", fixtures.synthetic_cases(2, depth=4, size=64))
    meta = json.loads((prepared / "prepare.json").read_text())
    meta["label_map"]["labels"] = {str(i): f"organ {i}" for i in range(1, 14)}  # BTCV's 13 ids
    (prepared / "prepare.json").write_text(json.dumps(meta))
    out = tmp_path / "bank"
    assert run_cli(["index", "build", str(prepared), "-o", str(out), "--embedder", "tiny", "--image-size", "28"]) == 0
    return out


def test_add_list_remove(bank, ct3mm, capsys):
    from ragsam.retrieval.bank import SupportBank

    capsys.readouterr()
    assert run_cli(["index", "list", str(bank)]) == 0
    assert capsys.readouterr().out.strip() == f"{bank}: no additions"
    assert run_cli(["index", "add", str(bank), str(ct3mm["image"]), str(ct3mm["labels"]), "--slices", "12,14-15",
                    "--by", "alice"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{bank}: added added-0001: 3 slices (z 12,14-15), organs ") and "by alice" in out
    assert str(Path(ct3mm["image"]).resolve()) in out
    grown = SupportBank.load(bank)
    assert len(grown) == 8 + 3 and grown.z[-3:].tolist() == [0, 1, 2]
    assert np.allclose(grown.rel_z[-3:], [12 / 29, 14 / 29, 15 / 29])
    assert run_cli(["index", "list", str(bank)]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 1 and listed[0].startswith("added-0001: 3 slices (z 12,14-15)")
    assert run_cli(["index", "remove", str(bank), "added-0001"]) == 0
    assert capsys.readouterr().out.startswith(f"{bank}: removed added-0001")
    assert len(SupportBank.load(bank)) == 8


def test_bad_input_is_one_line(bank, ct3mm, capsys):
    capsys.readouterr()
    assert run_cli(["index", "remove", str(bank), "added-0009"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ragsam: error: {bank}: no addition 'added-0009' (additions: none)"]
    assert run_cli(["index", "add", str(bank), str(ct3mm["image"]), str(ct3mm["labels"]), "--slices", "40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "slices [40] are outside the 30 slices" in err[0]
    assert run_cli(["index", "add", str(bank), str(ct3mm["image"]), str(ct3mm["labels"]), "--slices", "a-b"]) == 2
    assert "--slices must be comma-separated" in capsys.readouterr().err
