"""``prepare_dataset``: cache contents, exact round trips, incremental updates, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ragsam.data.phantom import make_phantom, write_phantom_dataset
from ragsam.data.prepare import PrepareOptions, prepare_dataset
from ragsam.data.slice_dataset import MANIFEST_COLUMNS, SliceDataset, read_manifest
from ragsam.data.slices import SliceGrid, SliceSettings, slices_to_volume, volume_to_slices
from ragsam.data.splits import Splits
from ragsam.data.volume import read_image, read_labels, write_labels
from ragsam.errors import InputError

SHAPE = (6, 24, 28)
SETTINGS = SliceSettings(size=32)


@pytest.fixture()
def dataset(tmp_path) -> Path:
    return write_phantom_dataset(tmp_path / "src", n_cases=4, layout="btcv", seed=3, shape=SHAPE)


def _prepare(src: Path, out: Path, force: bool = False, progress=None, **settings):
    """``prepare_dataset`` with these tests' slice settings unless ``settings=`` says otherwise."""
    options = PrepareOptions(**{"settings": SETTINGS, **settings})
    return prepare_dataset(src, out, options, force=force, progress=progress)


def test_cache_contents_round_trip_exactly(dataset, tmp_path):
    out = tmp_path / "prepared"
    summary = _prepare(dataset, out)
    assert summary.cases == ["0001", "0002", "0003", "0004"] and summary.built == summary.cases
    assert summary.reused == [] and summary.removed == [] and summary.slices == 4 * SHAPE[0]
    for cid in summary.cases:
        case_dir = out / "cases" / cid
        image, labels = np.load(case_dir / "image.npy"), np.load(case_dir / "label.npy")
        assert image.dtype == np.float16 and image.shape == (6, 32, 32)
        assert labels.dtype == np.uint8 and labels.shape == (6, 32, 32)
        grid = SliceGrid.from_json(json.loads((case_dir / "grid.json").read_text()))
        src_image = read_image(dataset / "img" / f"img{cid}.nii.gz")
        src_labels = read_labels(dataset / "label" / f"label{cid}.nii.gz", src_image)
        expected = volume_to_slices(src_image, src_labels, SETTINGS)
        assert np.array_equal(image, expected.images.astype(np.float16))
        assert np.array_equal(labels, expected.labels) and grid == expected.grid
        assert np.array_equal(slices_to_volume(labels, grid), src_labels.array)  # cache -> original grid
    label_map = json.loads((out / "label_map.json").read_text())
    assert label_map["name"] == "btcv" and label_map["labels"]["6"] == "liver"
    meta = json.loads((out / "prepare.json").read_text())
    assert meta["complete"] is True and meta["settings"]["size"] == 32 and set(meta["cases"]) == set(summary.cases)


def test_manifest_rows_and_auto_split(dataset, tmp_path):
    out = tmp_path / "prepared"
    _prepare(dataset, out)
    header = (out / "manifest.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == MANIFEST_COLUMNS
    # btcv layout -> the paper's 24/6 rule scaled to 4 cases: 1 test case, at sorted position floor(0.5 * 4)
    assert Splits.read(out).to_json() == {"train": ["0001", "0002", "0004"], "test": ["0003"]}
    records = read_manifest(out)
    assert len(records) == 24
    for r in records:
        labels = np.load(out / "cases" / r.case_id / "label.npy")
        assert r.organs == tuple(int(o) for o in np.unique(labels[r.z]) if o)
        assert r.rel_z == pytest.approx(r.z / 5) and (r.orig_x, r.orig_y, r.orig_z) == (28, 24, 6)
        assert (r.spacing_x, r.spacing_y, r.spacing_z) == (4.0, 4.0, 5.0)
        assert r.split == ("test" if r.case_id == "0003" else "train")
    item = SliceDataset(out, case_ids=["0002"])[3]
    assert np.array_equal(item["label"].numpy(), np.load(out / "cases" / "0002" / "label.npy")[3])


def test_incremental_update(dataset, tmp_path):
    out = tmp_path / "prepared"
    _prepare(dataset, out)
    stamp = (out / "cases" / "0001" / "image.npy").stat().st_mtime_ns
    again = _prepare(dataset, out)
    assert again.built == [] and again.reused == ["0001", "0002", "0003", "0004"]
    assert (out / "cases" / "0001" / "image.npy").stat().st_mtime_ns == stamp
    # touched but identical content: still reused (content hash); changed labels: rebuilt
    os.utime(dataset / "img" / "img0001.nii.gz", ns=(1, 1))
    _, other = make_phantom(SHAPE, (5.0, 4.0, 4.0), seed=99)
    write_labels(other.array, other.geometry, dataset / "label" / "label0002.nii.gz", force=True)
    (dataset / "img" / "img0004.nii.gz").unlink()
    (dataset / "label" / "label0004.nii.gz").unlink()
    third = _prepare(dataset, out)
    assert third.built == ["0002"] and third.reused == ["0001", "0003"] and third.removed == ["0004"]
    assert not (out / "cases" / "0004").exists()
    assert np.array_equal(np.load(out / "cases" / "0002" / "label.npy"), volume_to_slices(
        read_image(dataset / "img" / "img0002.nii.gz"), other, SETTINGS).labels)
    assert {r.case_id for r in read_manifest(out)} == {"0001", "0002", "0003"}
    # other settings: every case rebuilt
    assert _prepare(dataset, out, settings=SliceSettings(size=28)).built == ["0001", "0002", "0003"]
    assert np.load(out / "cases" / "0001" / "label.npy").shape == (6, 28, 28)


def test_refuses_foreign_folder_unless_forced(dataset, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a ragsam slice cache"):
        _prepare(dataset, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written
    assert _prepare(dataset, out, force=True).built == ["0001", "0002", "0003", "0004"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert _prepare(dataset, out, force=True).built == ["0001", "0002", "0003", "0004"]  # force rebuilds


def test_label_ids_outside_the_map_refused(dataset, tmp_path):
    _, labels = make_phantom(SHAPE, (5.0, 4.0, 4.0), seed=1)
    bad = labels.array.copy()
    bad[0, 0, 0] = 14
    write_labels(bad, labels.geometry, dataset / "label" / "label0003.nii.gz", force=True)
    with pytest.raises(InputError, match=r"label0003\.nii\.gz.*\[.*14\]"):
        _prepare(dataset, tmp_path / "prepared")
    with pytest.raises(InputError, match="label0003"):
        _prepare(dataset, tmp_path / "new" / "nested" / "prepared")
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # a refused new cache leaves nothing (no prepare.json)


def test_subset_label_map_converts_and_kfold_split(dataset, tmp_path):
    out = tmp_path / "prepared"
    summary = _prepare(dataset, out, label_map="paper-8", split="kfold:2", seed=0)
    src = read_labels(dataset / "label" / "label0001.nii.gz")
    labels = slices_to_volume(np.load(out / "cases" / "0001" / "label.npy"),
                              SliceGrid.from_json(json.loads((out / "cases" / "0001" / "grid.json").read_text())))
    # paper-8 order: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 liver, 6 stomach, 7 aorta, 8 pancreas
    for btcv_id, paper_id in {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8, 5: 0, 9: 0}.items():
        assert np.array_equal(labels[src.array == btcv_id], np.full((src.array == btcv_id).sum(), paper_id))
    splits = Splits.read(out).to_json()
    assert splits["train"] == summary.cases and len(splits["folds"]) == 2
    fold_of = {c: f"fold{i}" for i, f in enumerate(splits["folds"]) for c in f["val"]}
    assert {(r.case_id, r.split) for r in read_manifest(out)} == set(fold_of.items())
    assert SliceDataset(out).num_classes == 9
    with pytest.raises(InputError, match="'kfold:x'"):
        _prepare(dataset, tmp_path / "other", split="kfold:x")


def test_bad_source_refused(tmp_path):
    with pytest.raises(InputError, match="nowhere"):
        prepare_dataset(tmp_path / "nowhere", tmp_path / "out", PrepareOptions(settings=SETTINGS))
    assert not (tmp_path / "out").exists()


def test_shared_3mm_case_folder(ct3mm, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_dataset(ct3mm["image"].parent, out, PrepareOptions(settings=SliceSettings(size=128), split="none"))
    assert summary.cases == ["abdomen-ct-3mm"] and summary.slices == 30
    records = read_manifest(out)
    assert {(r.orig_x, r.orig_y, r.orig_z, r.spacing_x, r.spacing_z) for r in records} == {(122, 101, 30, 3.0, 3.0)}
    case_dir = out / "cases" / "abdomen-ct-3mm"
    grid = SliceGrid.from_json(json.loads((case_dir / "grid.json").read_text()))
    labels = read_labels(ct3mm["labels"], read_image(ct3mm["image"]))
    assert grid.orientation == "RAS"
    assert np.array_equal(slices_to_volume(np.load(case_dir / "label.npy"), grid), labels.array)
    assert summary.organ_slices[6] == sum(6 in r.organs for r in records) > 0  # liver


def test_refused_update_leaves_the_previous_cache_as_it_was(dataset, tmp_path):
    import shutil

    out = tmp_path / "prepared"
    _prepare(dataset, out)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    label2, label3 = dataset / "label" / "label0002.nii.gz", dataset / "label" / "label0003.nii.gz"
    shutil.copy(label2, tmp_path / "keep2.nii.gz")
    shutil.copy(label3, tmp_path / "keep3.nii.gz")
    _, other = make_phantom(SHAPE, (5.0, 4.0, 4.0), seed=42)
    write_labels(other.array, other.geometry, label2, force=True)
    bad = other.array.copy()
    bad[0, 0, 0] = 200
    write_labels(bad, other.geometry, label3, force=True)
    with pytest.raises(InputError, match="200"):  # 0002 is rebuilt, then 0003 stops the run
        _prepare(dataset, out)
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before  # complete, and still the old content: train can use it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep2.nii.gz", "keep3.nii.gz", "prepared", "src"]
    assert len(SliceDataset(out)) > 0
    shutil.copy(tmp_path / "keep2.nii.gz", label2)  # back to the inputs of the complete cache
    shutil.copy(tmp_path / "keep3.nii.gz", label3)
    rerun = _prepare(dataset, out)
    assert rerun.built == [] and rerun.reused == ["0001", "0002", "0003", "0004"]
    write_labels(other.array, other.geometry, label2, force=True)  # a good change is picked up
    assert _prepare(dataset, out).built == ["0002"]
    assert np.array_equal(np.load(out / "cases" / "0002" / "label.npy"),
                          volume_to_slices(read_image(dataset / "img" / "img0002.nii.gz"),
                                           read_labels(label2), SETTINGS).labels)


def test_detached_header_data_file_is_part_of_the_fingerprint(tmp_path):
    import SimpleITK as sitk

    from ragsam.data.volume import to_sitk

    src = tmp_path / "pairs"
    src.mkdir()
    image, labels = make_phantom(SHAPE, (5.0, 4.0, 4.0), seed=8)
    sitk.WriteImage(to_sitk(image), str(src / "case1_image.mhd"))
    sitk.WriteImage(to_sitk(labels), str(src / "case1_label.mhd"))
    out = tmp_path / "prepared"
    first = _prepare(src, out, layout="pairs", split="none")
    roles = sorted(f["role"] for f in json.loads((out / "prepare.json").read_text())["cases"]["case1"]["files"])
    assert first.built == ["case1"] and roles == ["image", "image-data", "labels", "labels-data"]
    changed = labels.array.copy()
    changed[changed == 6] = 0  # same header bytes, other voxels in the .raw file
    sitk.WriteImage(to_sitk(type(labels)(changed, labels.geometry, labels.path)), str(src / "case1_label.mhd"))
    assert _prepare(src, out, layout="pairs", split="none").built == ["case1"]
    assert 6 not in np.load(out / "cases" / "case1" / "label.npy")


def test_jobs_build_the_same_cache(dataset, tmp_path):
    seen = []
    one = _prepare(dataset, tmp_path / "one", jobs=1)
    two = _prepare(dataset, tmp_path / "two", jobs=2, progress=lambda cid, n, total: seen.append((cid, n, total)))
    assert two.built == one.built == ["0001", "0002", "0003", "0004"]
    assert seen == [("0001", 1, 4), ("0002", 2, 4), ("0003", 3, 4), ("0004", 4, 4)]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "prepare.json":  # it records the output folder's own path
            assert (tmp_path / "two" / rel).read_bytes() == (tmp_path / "one" / rel).read_bytes(), rel
    # a worker's input error is the serial one: the file named, nothing written
    _, labels = make_phantom(SHAPE, (5.0, 4.0, 4.0), seed=1)
    bad = labels.array.copy()
    bad[0, 0, 0] = 14
    write_labels(bad, labels.geometry, dataset / "label" / "label0003.nii.gz", force=True)
    with pytest.raises(InputError, match=r"label0003\.nii\.gz.*\[.*14\]"):
        _prepare(dataset, tmp_path / "three", jobs=2)
    assert not (tmp_path / "three").exists()


def test_second_writer_refused_and_dead_attempts_cleared(dataset, tmp_path):
    from ragsam.utils.locking import FolderLockedError, folder_lock

    out = tmp_path / "prepared"
    with folder_lock(out), pytest.raises(FolderLockedError, match="in use by another ragsam process"):
        _prepare(dataset, out)
    assert not out.exists()
    (tmp_path / ".prepared.x1y2.tmp" / "cases").mkdir(parents=True)  # what a kill -9 leaves
    _prepare(dataset, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "src"]
