"""``ragsam index build|query`` on a cache made from the shared 3 mm CT plus a synthetic case."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from ragsam.cli.main import run_cli


def _write_prepared():
    spec = importlib.util.spec_from_file_location(
        "bank_fixtures", Path(__file__).resolve().parents[1] / "retrieval" / "bank_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_prepared


@pytest.fixture(scope="module")
def cache(ct3mm, tmp_path_factory) -> Path:
    """The real CT sliced exactly as ``ragsam prepare`` does (64 px), and a random second case."""
    from ragsam.data.slices import SliceSettings, volume_to_slices
    from ragsam.data.volume import read_image, read_labels

    torch.manual_seed(0)
    image = read_image(ct3mm["image"])
    stack = volume_to_slices(image, read_labels(ct3mm["labels"], reference=image), SliceSettings(size=64))
    rng = np.random.default_rng(0)
    synth = (rng.random((5, 64, 64), dtype=np.float32), np.full((5, 64, 64), 6, np.uint8))
    root = tmp_path_factory.mktemp("cli")
    return _write_prepared()(root / "prepared", {"ct3mm": (stack.images, stack.labels), "synth": synth})


@pytest.fixture(scope="module")
def bank(cache) -> Path:
    out = cache.parent / "bank"
    assert run_cli(["index", "build", str(cache), "-o", str(out), "--embedder", "tiny", "--image-size", "28"]) == 0
    return out


def _rows(text: str) -> list[list[str]]:
    """Body rows of the rich table as lists of cell strings."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) == 7 and cells[0].isdigit():
            rows.append(cells)
    return rows


def test_build_reports_and_refuses_overwrite(bank, cache, capsys):
    assert (bank / "index.faiss").is_file()
    code = run_cli(["index", "build", str(cache), "-o", str(bank), "--embedder", "tiny", "--image-size", "28"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already exists (use --force" in err[0]
    assert run_cli(["index", "build", str(cache), "-o", str(bank), "--embedder", "tiny", "--image-size", "28",
                    "--force"]) == 0
    assert "35 slices from 2 cases, 32-d tiny embeddings, flat index" in capsys.readouterr().out


def test_query_by_case_finds_itself_and_excludes_it(bank, capsys):
    capsys.readouterr()
    assert run_cli(["index", "query", str(bank), "--case", "ct3mm", "--z", "10", "--k", "3"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 3 and rows[0][1:4] == ["ct3mm", "10", f"{10 / 29:.3f}"] and rows[0][4] == "1.0000"
    assert run_cli(["index", "query", str(bank), "--case", "ct3mm", "--z", "10", "--k", "4",
                    "--exclude-own-case", "--require-organs", "6", "--z-prior", "0.5"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [r[1] for r in rows] == ["synth"] * 4 and all(r[6] == "liver" for r in rows)
    # score = similarity - 0.5 * |rel_z(10 of 30) - rel_z(support)|
    for r in rows:
        assert float(r[5]) == pytest.approx(float(r[4]) - 0.5 * abs(10 / 29 - float(r[3])), abs=2e-4)


def test_query_by_image_file_reproduces_the_cache_slicing(bank, ct3mm, capsys):
    capsys.readouterr()
    assert run_cli(["index", "query", str(bank), "--image", str(ct3mm["image"]), "--z", "17", "--k", "1"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[0][1:3] == ["ct3mm", "17"] and rows[0][4] == "1.0000"


@pytest.mark.parametrize("argv, message", [
    (["--case", "ct3mm", "--image", "x.nii.gz", "--z", "1"], "exactly one of --case"),
    (["--case", "ct3mm", "--z", "1", "--k", "99"], "k=99 must be between 1 and the bank size (35 slices)"),
    (["--case", "ct3mm", "--z", "30"], "--z 30 is outside the 30 slices of ct3mm"),
    (["--case", "ct3mm", "--z", "1", "--require-organs", "liver"], "comma-separated label ids"),
    (["--case", "img0099", "--z", "1"], "case 'img0099' is not in the prepared cache"),
    (["--case", "../../bank", "--z", "1"], "escapes the dataset root"),
])
def test_query_errors_are_one_line(bank, capsys, argv, message):
    capsys.readouterr()
    assert run_cli(["index", "query", str(bank), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_query_of_a_folder_that_is_no_bank(tmp_path, capsys):
    assert run_cli(["index", "query", str(tmp_path), "--case", "a", "--z", "0"]) == 2
    assert "not a support bank" in capsys.readouterr().err


def test_ivfpq_bank_builds_and_answers_queries(cache, capsys):
    import json

    out = cache.parent / "bank-pq"
    assert run_cli(["index", "build", str(cache), "-o", str(out), "--embedder", "tiny", "--image-size", "28",
                    "--kind", "ivfpq"]) == 0
    assert "35 slices from 2 cases, 32-d tiny embeddings, ivfpq index" in capsys.readouterr().out
    index = json.loads((out / "bank.json").read_text())["settings"]["index"]
    # 35 slices: nlist = min(4 sqrt(35), 35 // 39) -> 1 list; m = 32 / 8 = 4 codes of 1 bit (35 // 32 = 1)
    assert (index["kind"], index["nlist"], index["pq_m"], index["pq_nbits"]) == ("ivfpq", 1, 4, 1)
    assert run_cli(["index", "query", str(out), "--case", "ct3mm", "--z", "10", "--k", "3"]) == 0
    assert len(_rows(capsys.readouterr().out)) == 3
