"""Volume-level retrieval segmentation (ragsam.retrieval.segment) on the shared 3 mm CT."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bank_fixtures import write_prepared

from ragsam.data.slices import SliceSettings, volume_to_slices
from ragsam.data.volume import read_image, read_labels
from ragsam.errors import InputError, OutputExistsError
from ragsam.inference.rag_segment import SegmenterOptions, segment_cases, segment_volume
from ragsam.retrieval.bank import BankOptions, build_bank
from ragsam.retrieval.embedder import build_embedder
from ragsam.retrieval.segment import (
    RagSegmenter,
    SegmentOptions,
    SupportCache,
    check_ct_like,
)

SIZE = 64  # slice size of the bank (the tiny SAM 2 resizes to its 128 px input)
TINY = SegmenterOptions("tiny")  # the tiny random SAM 2 of the tests


@pytest.fixture(scope="module")
def rag(ct3mm, tmp_path_factory):
    """A bank built from the shared 3 mm case (case id "ct3mm"), tiny DINOv2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rag")
    image = read_image(ct3mm["image"])
    labels = read_labels(ct3mm["labels"], reference=image)
    stack = volume_to_slices(image, labels, SliceSettings(size=SIZE))
    prepared = write_prepared(root / "prepared", {"ct3mm": (stack.images, stack.labels)})
    torch.manual_seed(0)
    build_bank(prepared, root / "bank", BankOptions(embedder_weights="tiny", image_size=28))
    yield {"root": root, "bank": root / "bank", "image": ct3mm["image"], "volume": image,
           "bank_organs": set(np.unique(stack.labels).tolist()) - {0}}
    torch.set_num_threads(threads)


def test_end_to_end_writes_labels_on_the_input_geometry(rag):
    out = rag["root"] / "out" / "labels.nii.gz"
    summary = segment_volume(rag["image"], out, rag["bank"], TINY, SegmentOptions(k=3))
    written = sitk.ReadImage(str(out))
    source = sitk.ReadImage(str(rag["image"]))
    assert written.GetSize() == source.GetSize() == (122, 101, 30)
    assert np.allclose(written.GetSpacing(), source.GetSpacing())
    assert np.allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert np.allclose(written.GetDirection(), source.GetDirection())
    labels = sitk.GetArrayFromImage(written)
    found = set(np.unique(labels).tolist()) - {0}
    assert found and found <= rag["bank_organs"]  # only organs the retrieved supports hold
    assert summary.slices == 30 and summary.k == 3 and summary.organs == sorted(found)
    # neighbouring slices share supports: far fewer encodings than 30 x 3
    assert summary.support_cache_hits > 0
    assert summary.support_slices_encoded + summary.support_cache_hits == 30 * 3
    assert summary.sam2["kind"] == "tiny"
    # deterministic: the same call again (with force) writes the same labels
    segment_volume(rag["image"], out, rag["bank"], SegmenterOptions("tiny", cache_size=2), SegmentOptions(k=3), force=True)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), labels)


def test_refusals(rag, tmp_path):
    out = tmp_path / "x.nii.gz"
    with pytest.raises(InputError, match="k=31 must be between 1 and the bank size"):
        segment_volume(rag["image"], out, rag["bank"], TINY, SegmentOptions(k=31))
    with pytest.raises(InputError, match="excluded cases \\['nope'\\] are not in the bank"):
        segment_volume(rag["image"], out, rag["bank"], TINY, SegmentOptions(exclude_cases=("nope",)))
    with pytest.raises(InputError, match="only 0 of 30 slices remain"):
        segment_volume(rag["image"], out, rag["bank"], TINY, SegmentOptions(exclude_cases=("ct3mm",)))
    other = build_embedder("tiny", image_size=28, seed=1)
    with pytest.raises(InputError, match="differs from query embedder"):
        segment_volume(rag["image"], out, rag["bank"], SegmenterOptions("tiny", embedder=other))
    with pytest.raises(InputError, match="not a ragsam run folder"):
        segment_volume(rag["image"], out, rag["bank"], TINY, SegmentOptions(run_dir=tmp_path))
    with pytest.raises(InputError, match="pointer positions"):
        segment_volume(rag["image"], out, rag["bank"], SegmenterOptions("tiny", pointer_positions="random"))
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        segment_volume(rag["image"], out, rag["bank"], TINY)
    assert out.read_bytes() == b"old"
    # not CT-like inputs: [0, 1] values, and a single slice
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(rag["image"]))).astype(np.float32)
    unit = sitk.GetImageFromArray((arr - arr.min()) / (arr.max() - arr.min()))
    sitk.WriteImage(unit, str(tmp_path / "unit.nii.gz"))
    with pytest.raises(InputError, match="do not look like CT in HU"):
        segment_volume(tmp_path / "unit.nii.gz", tmp_path / "u.nii.gz", rag["bank"], TINY)
    assert not (tmp_path / "u.nii.gz").exists()


def test_dataset_folder_shares_models_and_supports_across_cases(rag, tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("a", "b"):  # two cases: the same scan twice, so case b retrieves exactly case a's supports
        shutil.copy(rag["image"], folder / f"{name}.nii.gz")
    single = tmp_path / "single.nii.gz"
    alone = segment_volume(rag["image"], single, rag["bank"], TINY, SegmentOptions(k=2))
    summaries = segment_cases(folder, tmp_path / "out", rag["bank"], TINY, SegmentOptions(k=2))
    assert [s.output for s in summaries] == [str(tmp_path / "out" / f"{c}.nii.gz") for c in ("a", "b")]
    first, second = summaries
    assert first.support_slices_encoded == alone.support_slices_encoded > 0
    assert second.support_slices_encoded == 0  # every support of case b was encoded for case a
    assert second.support_cache_hits == 30 * 2
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(single)))
    for s in summaries:  # cached memories give exactly the labels of a fresh segmenter
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(s.output)), expected)
    # every output is checked before any model loads: one file ragsam did not write stops the whole run
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "b.nii.gz").write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        segment_cases(folder, tmp_path / "again", rag["bank"], TINY, SegmentOptions(k=2))
    assert not (tmp_path / "again" / "a.nii.gz").exists()
    # a rerun skips the finished cases (the rules: tests/utils/test_case_runner.py)
    before = (tmp_path / "out" / "a.nii.gz").stat().st_mtime_ns
    again = segment_cases(folder, tmp_path / "out", rag["bank"], TINY, SegmentOptions(k=2))
    assert [(s.skipped, s.organs) for s in again] == [(True, s.organs) for s in summaries]
    assert (tmp_path / "out" / "a.nii.gz").stat().st_mtime_ns == before
    with pytest.raises(InputError, match="not a folder"):
        segment_cases(folder, single, rag["bank"], TINY)


def test_segmenter_keeps_per_call_counts(rag, tmp_path):
    segmenter = RagSegmenter(rag["bank"], "tiny", cache_size=4)
    one = segmenter.segment(rag["image"], tmp_path / "1.nii.gz", SegmentOptions(k=3))
    two = segmenter.segment(rag["image"], tmp_path / "2.nii.gz", SegmentOptions(k=3))
    assert one.support_slices_encoded + one.support_cache_hits == 30 * 3
    assert two.support_slices_encoded + two.support_cache_hits == 30 * 3
    assert segmenter.cache.encoded == one.support_slices_encoded + two.support_slices_encoded
    assert len(segmenter.cache.items) == 4  # the LRU bound holds across volumes


def test_ct_rule_hand_cases():
    check_ct_like(np.array([[[-1000.0, 40.0]], [[0.0, 300.0]]]), "ok.nii.gz")
    with pytest.raises(InputError, match="not a 3D volume"):
        check_ct_like(np.zeros((1, 8, 8)) - 1000, "one.nii.gz")
    with pytest.raises(InputError, match="not a 3D volume"):
        check_ct_like(np.zeros((8, 8)), "flat.nii.gz")
    with pytest.raises(InputError, match="0 .. 255"):
        check_ct_like(np.array([[[0.0, 255.0]], [[10.0, 20.0]]]), "png.nii.gz")
    with pytest.raises(InputError, match="-150 .. -100"):
        check_ct_like(np.array([[[-150.0, -100.0]], [[-120.0, -110.0]]]), "narrow.nii.gz")


def test_support_cache_is_lru():
    cache = SupportCache(2)
    cache.put(("a", 0), 1)
    cache.put(("a", 1), 2)
    assert cache.get(("a", 0)) == 1  # a0 becomes most recent
    cache.put(("a", 2), 3)  # evicts a1
    assert cache.get(("a", 1)) is None and cache.get(("a", 2)) == 3
    assert (cache.hits, cache.encoded) == (2, 3)


def test_own_supports_keep_their_labels_and_change_the_neighbours(rag):
    segmenter = RagSegmenter(rag["bank"], sam2="tiny")
    image = read_image(rag["image"])
    plain = rag["root"] / "own" / "plain.nii.gz"
    segmenter.segment(rag["image"], plain, SegmentOptions(k=2))
    own_label = np.zeros((SIZE, SIZE), np.uint8)
    own_label[10:40, 12:50] = 6  # a large "liver" the user painted on canonical slice 15
    with_own = rag["root"] / "own" / "with_own.nii.gz"
    segmenter.segment(rag["image"], with_own, SegmentOptions(k=2), own_supports={15: own_label})
    grid = volume_to_slices(image, None, SliceSettings(size=SIZE)).grid
    from ragsam.data.slices import to_canonical

    before = to_canonical(sitk.GetArrayFromImage(sitk.ReadImage(str(plain))), grid.axes, grid.flips)
    after = to_canonical(sitk.GetArrayFromImage(sitk.ReadImage(str(with_own))), grid.axes, grid.flips)
    assert ((after[15] == 6).mean() > 0.25) and (before[15] == 6).mean() < (after[15] == 6).mean()
    assert not np.array_equal(before[14], after[14]) and not np.array_equal(before[16], after[16])
    with pytest.raises(InputError, match="own support slice z=99"):
        segmenter.segment(rag["image"], with_own, SegmentOptions(k=2), force=True, own_supports={99: own_label})


def test_folder_runs_past_a_corrupt_case_and_the_rerun_finishes_it(rag, tmp_path):
    from ragsam.errors import CasesFailedError

    folder = tmp_path / "cases"
    folder.mkdir()
    shutil.copy(rag["image"], folder / "a.nii.gz")
    good = rag["image"].read_bytes()
    (folder / "b.nii.gz").write_bytes(good[:300])  # truncated
    out = tmp_path / "out"
    with pytest.raises(CasesFailedError) as exc:
        segment_cases(folder, out, rag["bank"], TINY, SegmentOptions(k=2))
    assert [cid for cid, _ in exc.value.failures] == ["b"] and exc.value.exit_code == 2
    assert exc.value.lines() == [f"ragsam: error: {exc.value.failures[0][1]}"] and "b.nii.gz" in exc.value.lines()[0]
    assert [s.output for s in exc.value.results] == [str(out / "a.nii.gz")]
    assert not (out / "b.nii.gz").exists()
    (folder / "b.nii.gz").write_bytes(good)
    rerun = segment_cases(folder, out, rag["bank"], TINY, SegmentOptions(k=2))
    assert [s.skipped for s in rerun] == [True, False]


def test_segment_options_key_and_checks():
    options = SegmentOptions(k=2, exclude_cases=("a",), batch_size=3, z_prior=None)
    # what changes an output (the batch size does not; a run enters by its files)
    assert options.output_key() == {"k": 2, "exclude_cases": ["a"], "series_uid": None, "z_prior": None,
                                    "hybrid_weight": 0.5}
    with pytest.raises(InputError):
        SegmentOptions(batch_size=0).check()
    # the models' part of segment_cases' resume key: the names and values of the keys before the options
    # objects, so the sidecars of earlier runs stay valid (cache size, device and embedder do not enter)
    from ragsam.utils.case_runner import weights_key

    assert SegmenterOptions("tiny", cache_size=3, device="cpu").output_key() == {
        "sam2": weights_key("tiny"), "pointers": "sequential", "empty": True, "sam2_run": None}
    with pytest.raises(InputError, match="pointer positions"):
        SegmenterOptions(pointer_positions="random").check()
