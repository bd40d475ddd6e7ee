"""DICOM SEG writing and reading (highdicom) on the shared DICOM series, stored head-first and feet-first.

The labels are the shared case's real BTCV labels (8 organs present of 13), paired with the
series by physical position; each test compares voxel for voxel.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_series import copy_series
from ragsam.data.dicom_seg import (
    build_dicom_seg,
    organ_codes,
    read_dicom_seg,
    seg_path_for,
    slice_indices,
    source_datasets,
    write_dicom_seg,
)
from ragsam.data.label_maps import load_label_map
from ragsam.data.volume import Volume, read_image, read_labels
from ragsam.errors import InputError, OutputExistsError

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def series(ct_dicom, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("series")
    return {order: copy_series(ct_dicom["image"], root / order, order) for order in ("head-first", "feet-first")}


@pytest.fixture(scope="module")
def real_labels(ct_dicom) -> np.ndarray:
    """The shared labels on the shared series' grid (z, y, x)."""
    return read_labels(ct_dicom["labels"], reference=read_image(ct_dicom["image"])).array


def test_feet_first_copy_is_stored_the_other_way(series):
    head, feet = read_image(series["head-first"]), read_image(series["feet-first"])
    assert head.geometry.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert feet.geometry.direction == (-1, 0, 0, 0, 1, 0, 0, 0, -1)  # rows mirrored, slices head to feet
    np.testing.assert_array_equal(head.array, feet.array[::-1])  # same pixels, slices in the other order
    first = pydicom.dcmread(sorted(series["feet-first"].glob("*.dcm"))[0], stop_before_pixels=True)
    assert first.InstanceNumber == 1 and float(first.ImagePositionPatient[2]) == -804.5  # feet first


@pytest.mark.parametrize("order", ["head-first", "feet-first"])
def test_round_trip_is_voxel_exact(series, real_labels, order, tmp_path):
    image = read_image(series[order])
    # the same voxels of the same anatomy: the head-first grid's labels, re-stored like the image
    labels = real_labels if order == "head-first" else real_labels[::-1]
    out = write_dicom_seg(Volume(labels.copy(), image.geometry, Path("labels")), series[order], "btcv",
                          algorithm="test", model_key="key-1", out=tmp_path / "case.seg.dcm")
    back = read_dicom_seg(out, image)
    assert back.shape == labels.shape
    np.testing.assert_array_equal(back, labels)
    assert sorted(np.unique(back)) == [0, 1, 6, 7, 8, 9, 10, 11, 12]
    # the same, by organ name, into FLARE22's ids where both maps have the organ
    btcv, flare = load_label_map("btcv"), load_label_map("flare22")
    kept = np.where(np.isin(labels, [1, 6, 7, 8, 9, 11, 12]), labels, 0)  # no portal vein in FLARE22
    seg = write_dicom_seg(Volume(kept, image.geometry, Path("labels")), series[order], btcv,
                          algorithm="test", model_key="key-1", out=tmp_path / "kept.seg.dcm")
    expected = np.zeros_like(kept)
    for i in (1, 6, 7, 8, 9, 11, 12):
        expected[kept == i] = flare.id_of(btcv.labels[i])
    np.testing.assert_array_equal(read_dicom_seg(seg, image, label_map=flare), expected)


def test_segments_codes_and_references(series, real_labels):
    image = read_image(series["head-first"])
    seg = build_dicom_seg(Volume(real_labels, image.geometry, Path("l")), series["head-first"], "btcv",
                          algorithm="RAG", model_key="bank:abc")
    btcv = load_label_map("btcv")
    table = json.loads(resources.files("ragsam.resources").joinpath("snomed_organs.json").read_text())
    assert seg.SOPClassUID == SEG_CLASS and seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert [s.SegmentNumber for s in seg.SegmentSequence] == list(range(1, 14))  # every organ of the map
    for item in seg.SegmentSequence:
        name = btcv.labels[item.SegmentNumber]
        entry = table["organs"][name]
        category = table["categories"][entry["category"]]
        assert item.SegmentLabel == name
        cat, kind = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
        assert (cat.CodingSchemeDesignator, cat.CodeValue, cat.CodeMeaning) == \
            (category["scheme"], category["value"], category["meaning"]) == ("SCT", "91723000", "Anatomical Structure")
        assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == \
            (entry["type"]["scheme"], entry["type"]["value"], entry["type"]["meaning"])
        modifier = kind.get("SegmentedPropertyTypeModifierCodeSequence")
        if "modifier" in entry:
            assert modifier[0].CodeValue == entry["modifier"]["value"]
        else:
            assert modifier is None
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion, algo.AlgorithmFamilyCodeSequence[0].CodeValue) == \
            ("ragsam", "0.1.0", "123110")
        assert algo.AlgorithmParameters == "method=RAG,model=bank:abc"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
    spot = {i.SegmentNumber: i for i in seg.SegmentSequence}
    assert (spot[2].SegmentedPropertyTypeCodeSequence[0].CodeValue,
            spot[2].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning) == \
        ("64033007", "Right")  # right kidney = kidney + right
    # references: the source series, every instance, and each frame its own instance at its position
    sources, _ = source_datasets(series["head-first"])
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in ref.ReferencedInstanceSequence} == set(by_uid)
    z = slice_indices(sources, image.geometry, "x")
    z_of = {str(ds.SOPInstanceUID): int(k) for ds, k in zip(sources, z, strict=True)}
    frames = seg.pixel_array  # (frames, rows, columns) 0/1
    expected_frames = 0
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = str(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        assert [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient] == \
            [float(v) for v in by_uid[uid].ImagePositionPatient]
        np.testing.assert_array_equal(frames[f], real_labels[z_of[uid]] == number)
    for k in range(real_labels.shape[0]):
        expected_frames += len(set(np.unique(real_labels[k]).tolist()) - {0})
    assert seg.NumberOfFrames == expected_frames  # empty frames omitted, empty organs have none


def test_uids_follow_content(series, real_labels):
    image = read_image(series["head-first"])
    vol = Volume(real_labels, image.geometry, Path("l"))
    a = build_dicom_seg(vol, series["head-first"], "btcv", algorithm="RAG", model_key="k")
    b = build_dicom_seg(vol, series["head-first"], "btcv", algorithm="RAG", model_key="k")
    fixed = real_labels.copy()
    assert fixed[10, 0, 0] == 0
    fixed[10, 0, 0] = 13  # one voxel corrected
    c = build_dicom_seg(Volume(fixed, image.geometry, Path("l")), series["head-first"], "btcv",
                        algorithm="RAG", model_key="k")
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    assert a.SeriesInstanceUID == c.SeriesInstanceUID and a.SOPInstanceUID != c.SOPInstanceUID


def test_refusals(series, real_labels, ct_dicom, tmp_path):
    head, feet = read_image(series["head-first"]), read_image(series["feet-first"])
    vol = Volume(real_labels, head.geometry, Path("l"))
    seg = write_dicom_seg(vol, series["head-first"], "btcv", algorithm="t", model_key="k", out=tmp_path / "a.seg.dcm")
    with pytest.raises(OutputExistsError):
        write_dicom_seg(vol, series["head-first"], "btcv", algorithm="t", model_key="k", out=seg)
    with pytest.raises(InputError, match="references series .* not the reference series"):
        read_dicom_seg(seg, feet)  # a SEG of another series
    with pytest.raises(InputError, match="not a DICOM series folder"):
        read_dicom_seg(seg, Volume(head.array, head.geometry, ct_dicom["labels"]))
    with pytest.raises(InputError, match="is not a DICOM SEG"):
        read_dicom_seg(sorted(series["head-first"].glob("*.dcm"))[0], head)
    with pytest.raises(InputError, match="no StudyInstanceUID .anonymised"):
        build_dicom_seg(vol, ct_dicom["image"], "btcv", algorithm="t", model_key="k")  # the shared series itself
    with pytest.raises(InputError, match="is not on a slice of the labels' grid|orientation"):
        build_dicom_seg(Volume(real_labels, feet.geometry, Path("l")), series["head-first"], "btcv",
                        algorithm="t", model_key="k")
    with pytest.raises(InputError, match=r"label ids \[14\] are not in label map"):
        bad = real_labels.copy()
        bad[0, 0, 0] = 14
        build_dicom_seg(Volume(bad, head.geometry, Path("l")), series["head-first"], "btcv", algorithm="t", model_key="k")
    with pytest.raises(InputError, match="'bladder' has no SNOMED CT code"):
        build_dicom_seg(Volume((real_labels == 6).astype(np.uint8), head.geometry, Path("l")), series["head-first"],
                        {1: "bladder"}, algorithm="t", model_key="k")
    assert not (tmp_path / "b.seg.dcm").exists()


def test_table_covers_btcv_flare22_and_paper_maps():
    codes = organ_codes()
    for name in ("btcv", "flare22", "btcv-table1", "paper-8"):
        lmap = load_label_map(name)
        assert all(lmap.labels[i].lower() in codes for i in lmap.organ_ids), name
    assert seg_path_for("out/case.nii.gz") == Path("out/case.seg.dcm")
    assert seg_path_for("case.mha") == Path("case.seg.dcm")


def _foreign_seg(series: Path, masks: list[np.ndarray], segments: list[tuple[str, str, str, str | None]],
                 seg_type: str = "BINARY"):
    """A SEG as another tool writes one (highdicom directly): own numbering, labels and codes.

    ``segments``: (label, type value, type meaning, laterality value or None), numbered 1.. in order.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources, _ = source_datasets(series)
    z = slice_indices(sources, read_image(series).geometry, "x")
    descriptions = []
    for number, (label, value, meaning, side) in enumerate(segments, start=1):
        item = hd.seg.SegmentDescription(
            number, label, codes.SCT.AnatomicalStructure, hd.sr.CodedConcept(value, "SCT", meaning),
            hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        if side:
            item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(side, "SCT", "Left" if side == "7771000" else "Right")]
        descriptions.append(item)
    stack = np.stack([m[z] for m in masks], axis=-1).astype(np.uint8)  # (instances, rows, cols, segments)
    if seg_type == "LABELMAP":
        stack = (stack * np.arange(1, len(masks) + 1)).max(axis=-1).astype(np.uint8)
    return hd.seg.Segmentation(sources, stack, seg_type, descriptions, hd.UID(), 7, hd.UID(), 1, "other", "tool",
                               "1", "1")


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_reads_a_seg_written_elsewhere_into_the_label_map(series, real_labels, seg_type):
    """Segments renumbered, one renamed (matched by its code), laterality as a modifier: ids of the map."""
    image = read_image(series["head-first"])
    liver, spleen = real_labels == 6, real_labels == 1
    kidney = np.zeros_like(liver)
    kidney[5:8, 300:320, 100:140] = True  # a hand-drawn "left kidney"
    kidney &= ~liver & ~spleen
    seg = _foreign_seg(series["head-first"], [liver, spleen, kidney],
                       [("Liver", "10200004", "Liver", None), ("Milz", "78961009", "Spleen", None),
                        ("Niere links", "64033007", "Kidney", "7771000")], seg_type)
    expected = np.zeros(real_labels.shape, np.uint8)
    expected[liver], expected[spleen], expected[kidney] = 6, 1, 3
    np.testing.assert_array_equal(read_dicom_seg(seg, image, label_map="btcv"), expected)
    raw = read_dicom_seg(seg, image)  # no label map: segment numbers
    np.testing.assert_array_equal(raw, np.select([liver, spleen, kidney], [1, 2, 3], 0))
    np.testing.assert_array_equal(read_dicom_seg(seg, image, label_map="paper-8"),  # ids of another map
                                  np.select([liver, spleen, kidney], [5, 1, 3], 0))
    with pytest.raises(InputError, match=r"segment 3 \('Niere links', Kidney\) is no organ of label map 'custom'"):
        read_dicom_seg(seg, image, label_map={1: "spleen", 2: "liver"})


def test_overlapping_segments_the_higher_number_wins(series, real_labels):
    image = read_image(series["head-first"])
    liver = real_labels == 6
    blob = np.zeros_like(liver)
    blob[9:12, 150:350, 150:350] = True  # overlaps the liver
    seg = _foreign_seg(series["head-first"], [liver, blob],
                       [("liver", "10200004", "Liver", None), ("stomach", "69695003", "Stomach", None)])
    expected = np.where(blob, 7, np.where(liver, 6, 0))
    assert (liver & blob).any()
    np.testing.assert_array_equal(read_dicom_seg(seg, image, label_map="btcv"), expected)


def test_fractional_segments_hold_voxels_from_one_half(series, real_labels):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    image = read_image(series["head-first"])
    sources, _ = source_datasets(series["head-first"])
    z = slice_indices(sources, image.geometry, "x")
    probability = np.zeros(real_labels.shape, np.float32)
    probability[real_labels == 6] = 0.9
    probability[:, :40, :40] = 0.3  # below one half: background
    probability[:, 40:60, :40] = 0.5  # exactly one half: the organ
    description = hd.seg.SegmentDescription(1, "liver", codes.SCT.AnatomicalStructure, codes.SCT.Liver,
                                            hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                            hd.AlgorithmIdentificationSequence("x", codes.cid7162.ArtificialIntelligence, "1"))
    seg = hd.seg.Segmentation(sources, probability[z], "FRACTIONAL", [description], hd.UID(), 8, hd.UID(), 1,
                              "other", "tool", "1", "1", max_fractional_value=255)
    expected = np.where((real_labels == 6) | (probability == 0.5), 6, 0)
    np.testing.assert_array_equal(read_dicom_seg(seg, image, label_map="btcv"), expected)


def test_datasets_instead_of_a_folder(series, real_labels):
    """What a PACS fetch hands over: the instances' datasets (headers with pixels), in any order."""
    folder = series["feet-first"]
    datasets = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"), reverse=True)]
    image = read_image(folder)
    labels = real_labels[::-1].copy()
    seg = build_dicom_seg(Volume(labels, image.geometry, Path("l")), datasets, "btcv", algorithm="t", model_key="k")
    elsewhere = Volume(image.array, image.geometry, Path("not-a-folder"))
    np.testing.assert_array_equal(read_dicom_seg(seg, elsewhere, source_series=datasets), labels)
    assert all("PixelData" in ds for ds in datasets)  # the caller's datasets are left as they were
