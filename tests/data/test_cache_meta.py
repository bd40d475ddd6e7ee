"""``CacheMeta``: prepare.json round trips, versions and refusals."""

from __future__ import annotations

import json

import pytest

from ragsam.data.cache_meta import CACHE_FORMAT, CachedCase, CacheMeta
from ragsam.data.slices import SliceSettings
from ragsam.errors import InputError

# prepare.json as the current ragsam writes it (complete, one case), key order included
CURRENT = {
    "format": "ragsam-slice-cache", "version": 1, "complete": True, "ragsam": "0.1.0",
    "source": "/data/btcv", "layout": "btcv", "label_map": {"name": "btcv", "labels": {"0": "background", "1": "spleen"}},
    "settings": {"window": [-125.0, 275.0], "size": 64, "context": 0}, "series_uid": None, "split": "btcv",
    "seed": 0, "skipped_unlabelled": ["0009"],
    "cases": {"0001": {"key": "k1", "image": "/data/img0001.nii.gz", "labels": "/data/label0001.nii.gz",
                       "files": [{"role": "image", "path": "/data/img0001.nii.gz"}], "slices": 12}},
}


def test_round_trip_keeps_the_file_byte_for_byte(tmp_path) -> None:
    meta = CacheMeta.from_json(CURRENT)
    assert meta.format_version == 1 and meta.complete and meta.seed == 0
    assert meta.cases["0001"] == CachedCase("k1", [{"role": "image", "path": "/data/img0001.nii.gz"}],
                                            "/data/img0001.nii.gz", "/data/label0001.nii.gz", 12)
    assert meta.label_names == {0: "background", 1: "spleen"}
    assert meta.slice_settings == SliceSettings(window=(-125.0, 275.0), size=64, context=0)
    assert json.dumps(meta.to_json()) == json.dumps(CURRENT)
    meta.write(tmp_path)
    assert json.loads((tmp_path / "prepare.json").read_text()) == CURRENT
    assert CacheMeta.read(tmp_path) == meta


def test_incomplete_case_entries_hold_key_and_files_only() -> None:
    assert CachedCase("k", ["f"]).to_json() == {"key": "k", "files": ["f"]}


def test_a_file_without_version_is_version_1(tmp_path) -> None:
    (tmp_path / "prepare.json").write_text(json.dumps({k: v for k, v in CURRENT.items() if k != "version"}))
    assert CacheMeta.read(tmp_path).format_version == 1


def test_refusals_name_the_file_and_how_to_rebuild(tmp_path) -> None:
    with pytest.raises(InputError, match="not a prepared slice cache \\(no prepare.json\\)"):
        CacheMeta.read(tmp_path)
    (tmp_path / "prepare.json").write_text(json.dumps({**CURRENT, "version": 7}))
    with pytest.raises(InputError, match=r"prepare.json: format version 7 is written by a newer ragsam .*"
                                         r"rebuild the cache with `ragsam prepare --force`"):
        CacheMeta.read(tmp_path)
    (tmp_path / "prepare.json").write_text(json.dumps({**CURRENT, "complete": False}))
    with pytest.raises(InputError, match="incomplete"):
        CacheMeta.read(tmp_path)
    (tmp_path / "prepare.json").write_text(json.dumps({**CURRENT, "format": "other"}))
    with pytest.raises(InputError, match="not a ragsam slice cache \\(format 'other'\\)"):
        CacheMeta.read(tmp_path)
    (tmp_path / "prepare.json").write_text(json.dumps({**CURRENT, "cases": {"a": {"slices": "many"}}}))
    with pytest.raises(InputError, match="malformed cache description"):
        CacheMeta.read(tmp_path)


def test_peek_tells_caches_from_other_folders(tmp_path) -> None:
    assert CacheMeta.peek(tmp_path) == (False, None)
    (tmp_path / "prepare.json").write_text(json.dumps({**CURRENT, "version": 7}))
    assert CacheMeta.peek(tmp_path) == (True, None)  # a cache, of a version to rebuild
    (tmp_path / "prepare.json").write_text(json.dumps({**CURRENT, "complete": False}))
    is_cache, meta = CacheMeta.peek(tmp_path)
    assert is_cache and meta is not None and not meta.complete
    (tmp_path / "prepare.json").write_text(json.dumps({"format": CACHE_FORMAT + "-x"}))
    assert CacheMeta.peek(tmp_path) == (False, None)
