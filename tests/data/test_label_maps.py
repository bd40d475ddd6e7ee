"""Label maps: built-ins, the paper's subsets, JSON files, remapping and id checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ragsam.data.geometry import Geometry
from ragsam.data.label_maps import (
    LabelMap,
    check_label_ids,
    load_label_map,
    load_mapping,
    remap_labels,
    save_label_map,
)
from ragsam.data.volume import Volume, read_labels
from ragsam.errors import InputError, OutputExistsError


def test_btcv_matches_shared_file_and_flare22_ids(shared_data: Path) -> None:
    btcv = load_label_map("btcv")
    shared = load_label_map(shared_data / "labels-btcv.json")
    assert btcv.labels == shared.labels
    assert btcv.organ_ids == list(range(1, 14)) and btcv.num_classes == 14
    assert btcv.labels[10] == "portal vein and splenic vein" and btcv.id_of("Left Adrenal Gland") == 13
    # The shared file's TotalSegmentator conversion is parsed with int keys.
    assert shared.source_maps["totalsegmentator_v2_total_id"][52] == 8
    flare = load_label_map("FLARE22")
    expected = ["liver", "right kidney", "spleen", "pancreas", "aorta", "inferior vena cava",
                "right adrenal gland", "left adrenal gland", "gallbladder", "esophagus", "stomach",
                "duodenum", "left kidney"]
    assert [flare.labels[i] for i in range(1, 14)] == expected


def test_btcv_table1_merges_adrenal_glands() -> None:
    t1 = load_label_map("btcv-table1")
    assert t1.num_classes == 13 and t1.labels[12] == "adrenal glands" and t1.labels[11] == "pancreas"
    btcv_labels = np.arange(14, dtype=np.uint8)
    converted = remap_labels(btcv_labels, t1.source_maps["btcv"])
    np.testing.assert_array_equal(converted, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 12])


def test_paper_8_from_btcv_and_flare22() -> None:
    order = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
    on_btcv = load_label_map("paper-8")
    on_flare = load_label_map("paper-8:flare22")
    for lm in (on_btcv, on_flare):
        assert [lm.labels[i] for i in range(1, 9)] == order and lm.num_classes == 9
    ids = np.arange(14, dtype=np.uint8)
    # BTCV: 1 spleen, 2 R kid, 3 L kid, 4 gall, 5 eso (drop), 6 liver, 7 stomach, 8 aorta,
    # 9 IVC, 10 veins (drop), 11 pancreas, 12, 13 adrenals (drop).
    np.testing.assert_array_equal(remap_labels(ids, on_btcv.source_maps["btcv"]), [0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0])
    # FLARE22: 1 liver, 2 R kid, 3 spleen, 4 pancreas, 5 aorta, 6 IVC, 7, 8 adrenals, 9 gall,
    # 10 eso, 11 stomach, 12 duodenum, 13 L kid.
    np.testing.assert_array_equal(remap_labels(ids, on_flare.source_maps["flare22"]), [0, 5, 2, 1, 8, 7, 0, 0, 0, 4, 0, 6, 0, 3])
    with pytest.raises(InputError, match="base must be one of btcv, flare22"):
        load_label_map("paper-8:amos")


def test_json_round_trip_and_nnunet_form(tmp_path: Path) -> None:
    lm = LabelMap("mine", {0: "background", 2: "kidney", 5: "liver"}, {"old": {7: 5, 1: 2}})
    path = save_label_map(lm, tmp_path / "lm.json")
    assert json.loads(path.read_text())["labels"] == {"0": "background", "2": "kidney", "5": "liver"}
    back = load_label_map(path)
    assert back == lm and back.num_classes == 6 and back.organ_ids == [2, 5]
    with pytest.raises(OutputExistsError):
        save_label_map(lm, path)
    nn = tmp_path / "dataset.json"
    nn.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    assert load_label_map(nn).labels == {0: "background", 1: "liver", 2: "spleen"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', 'needs a non-empty "labels"'),
        ('{"labels": {"1": "liver"}}', "must name id 0"),
        ('{"labels": {"0": "background", "-1": "liver"}}', "'-1' must be an integer >= 0"),
        ('{"labels": {"0": "background", "a": "liver"}}', "label id 'a' is not an integer"),
        ('{"labels": {"0": "background", "1": "liver", "2": "Liver"}}', "organ names used for more than one id: 'liver'"),
        ('{"labels": {"0": "background", "1": "liver"}, "source_label_map": {"s": {"3": 4}}}', "maps to ids [4]"),
    ],
)
def test_bad_label_map_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        load_label_map(path)
    assert err.value.path == str(path) and message in err.value.problem


def test_unknown_name() -> None:
    with pytest.raises(InputError, match=r"not a built-in label map \(btcv, flare22, btcv-table1"):
        load_label_map("btvc")


def test_remap_from_mapping_file(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text('{"1": 3, "2": 1, "7": 300}')
    mapping = load_mapping(path)
    assert mapping == {1: 3, 2: 1, 7: 300}
    arr = np.array([[0, 1, 2], [7, 1, 0]], dtype=np.uint8)
    out = remap_labels(arr, mapping)
    np.testing.assert_array_equal(out, [[0, 3, 1], [300, 3, 0]])
    assert out.dtype == np.int16
    with pytest.raises(InputError, match=r"label ids \[4, 9\] have no entry"):
        remap_labels(np.array([4, 1, 9]), mapping, source="x.nii.gz")
    np.testing.assert_array_equal(remap_labels(np.array([4, 1, 9]), mapping, unmapped="background"), [0, 3, 0])
    path.write_text('{"1": "x"}')
    with pytest.raises(InputError, match="target id 'x' is not an integer"):
        load_mapping(path)


def test_check_label_ids(ct3mm: dict[str, Path]) -> None:
    labels = read_labels(ct3mm["labels"])
    assert check_label_ids(labels, load_label_map("btcv")) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13]
    with pytest.raises(InputError) as err:
        check_label_ids(labels, load_label_map("paper-8"))
    assert str(err.value) == (
        f"{ct3mm['labels']}: label ids [9, 10, 11, 12, 13] are not in label map 'paper-8:btcv' "
        "(ids [0, 1, 2, 3, 4, 5, 6, 7, 8])"
    )
    geom = Geometry((2, 1, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    big = Volume(np.array([[[0, 70000]]], dtype=np.int32), geom, Path("b"))
    with pytest.raises(InputError, match=r"\[70000\]"):
        check_label_ids(big, load_label_map("btcv"))
