"""SliceDataset over a hand-written cache: exact item values, 2.5D context, resizing, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ragsam.data.cache_meta import CACHE_FORMAT, CACHE_VERSION
from ragsam.data.slice_arrays import nearest_exact_indices, resize_labels
from ragsam.data.slice_dataset import (
    MANIFEST_COLUMNS,
    SliceDataset,
    read_manifest,
)
from ragsam.data.splits import Splits
from ragsam.errors import InputError


def _write_cache(root: Path, complete: bool = True) -> Path:
    """Case "a": 3 slices of 4 x 4, image slice z == z / 4, labels arange % 3 + z; case "b": 1 slice."""
    cases = {
        "a": (np.stack([np.full((4, 4), z / 4) for z in range(3)]),
              np.stack([(np.arange(16).reshape(4, 4) % 3) + z for z in range(3)])),
        "b": (np.full((1, 4, 4), 1.0), np.zeros((1, 4, 4))),
    }
    rows = [",".join(MANIFEST_COLUMNS)]
    for cid, (image, label) in cases.items():
        (root / "cases" / cid).mkdir(parents=True)
        np.save(root / "cases" / cid / "image.npy", image.astype(np.float16))
        np.save(root / "cases" / cid / "label.npy", label.astype(np.uint8))
        for z in range(len(image)):
            organs = ";".join(str(o) for o in np.unique(label[z]) if o)
            rel = z / (len(image) - 1) if len(image) > 1 else 0.0
            rows.append(f"{cid},{z},{rel},{organs},4,4,{len(image)},1,1,2.5,{'train' if cid == 'a' else 'test'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "complete": complete,
            "settings": {"window": [-125, 275], "size": 4, "context": 0},
            "label_map": {"name": "t", "labels": {"0": "background", "1": "x", "2": "y", "3": "z", "4": "w"}}}
    (root / "prepare.json").write_text(json.dumps(meta))
    (root / "splits.json").write_text(json.dumps({"train": ["a"], "test": ["b"]}))
    return root


@pytest.fixture()
def cache(tmp_path):
    return _write_cache(tmp_path / "prepared")


def test_nearest_exact_indices_hand_computed():
    assert nearest_exact_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert nearest_exact_indices(4, 2).tolist() == [1, 3]
    assert nearest_exact_indices(3, 5).tolist() == [0, 0, 1, 2, 2]


def test_nearest_exact_matches_torch_and_round_trips():
    for n_in in range(1, 130):
        for n_out in (n_in, n_in + 1, 2 * n_in + 3, 512):
            up = nearest_exact_indices(n_in, n_out)
            x = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1)
            ref = torch.nn.functional.interpolate(x, size=(n_out, 1), mode="nearest-exact").view(-1)
            assert up.tolist() == ref.long().tolist()
            assert np.array_equal(up[nearest_exact_indices(n_out, n_in)], np.arange(n_in))  # exact way back
    labels = np.arange(12).reshape(3, 4)
    assert np.array_equal(resize_labels(labels, (6, 8)), np.repeat(np.repeat(labels, 2, 0), 2, 1))


def test_items_have_exact_values_and_types(cache):
    ds = SliceDataset(cache)
    assert len(ds) == 4 and ds.case_ids == ["a", "b"] and ds.num_classes == 5
    item = ds[1]
    assert item["case_id"] == "a" and item["z"] == 1
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 4, 4)
    assert torch.equal(item["image"], torch.full((3, 4, 4), 0.25))
    assert item["label"].dtype == torch.int64
    assert item["label"].tolist() == ((np.arange(16).reshape(4, 4) % 3) + 1).tolist()
    assert ds[3]["case_id"] == "b" and torch.equal(ds[3]["image"], torch.ones(3, 4, 4))
    assert SliceDataset(cache, channels=1)[0]["image"].shape == (1, 4, 4)


def test_context_neighbours_clamped_at_the_ends(cache):
    ds = SliceDataset(cache, context=1)
    firsts = [ds[i]["image"][:, 0, 0].tolist() for i in range(3)]
    assert firsts == [[0.0, 0.0, 0.25], [0.0, 0.25, 0.5], [0.25, 0.5, 0.5]]
    assert SliceDataset(cache, context=2)[0]["image"].shape == (5, 4, 4)


def test_resize_on_the_fly(cache):
    item = SliceDataset(cache, size=8)[2]
    expected = np.repeat(np.repeat((np.arange(16).reshape(4, 4) % 3) + 2, 2, 0), 2, 1)
    assert item["label"].shape == (8, 8) and item["label"].tolist() == expected.tolist()
    assert torch.allclose(item["image"], torch.full((3, 8, 8), 0.5))


def test_case_selection_loader_and_transform(cache):
    ds = SliceDataset(cache, case_ids=Splits.read(cache).test,
                      transform=lambda it: {**it, "image": it["image"] * 2})
    assert len(ds) == 1 and torch.equal(ds[0]["image"], torch.full((3, 4, 4), 2.0))
    batch = next(iter(torch.utils.data.DataLoader(SliceDataset(cache), batch_size=3)))
    assert batch["image"].shape == (3, 3, 4, 4) and batch["z"].tolist() == [0, 1, 2]
    with pytest.raises(InputError, match="'nope'"):
        SliceDataset(cache, case_ids=["a", "nope"])


def test_manifest_records(cache):
    records = read_manifest(cache)
    assert [(r.case_id, r.z, r.rel_z, r.organs, r.split) for r in records] == [
        ("a", 0, 0.0, (1, 2), "train"), ("a", 1, 0.5, (1, 2, 3), "train"), ("a", 2, 1.0, (2, 3, 4), "train"),
        ("b", 0, 0.0, (), "test")]
    assert records[0].spacing_z == 2.5 and records[0].orig_z == 3


def test_incomplete_or_foreign_folders_refused(tmp_path):
    incomplete = _write_cache(tmp_path / "half", complete=False)
    with pytest.raises(InputError, match="incomplete"):
        SliceDataset(incomplete)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="ragsam prepare"):
        SliceDataset(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "prepare.json").write_text('{"format": "something"}')
    with pytest.raises(InputError, match="not a ragsam slice cache"):
        read_manifest(tmp_path / "other")


def test_pickles_without_its_memory_maps(cache):
    import pickle

    ds = SliceDataset(cache)
    first = ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays == {} and torch.equal(clone[0]["image"], first["image"])
