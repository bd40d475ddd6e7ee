"""End to end: prompted tiny SAM (random weights) on the shared 3 mm CT and on a prepared cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ragsam.baselines.run import BaselineConfig, BaselineSummary, prompt_organs, run_baseline
from ragsam.data.label_maps import load_label_map
from ragsam.data.slices import SliceSettings
from ragsam.errors import InputError, OutputExistsError


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory: pytest.TempPathFactory, ct3mm: dict[str, Path]) -> BaselineSummary:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("baseline") / "out"
    config = BaselineConfig(prompt="box", weights="random", arch="tiny", labels=ct3mm["labels"], seed=0,
                            device="cpu", slice_settings=SliceSettings(size=128))
    return run_baseline(ct3mm["image"], out, config)


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_prediction_is_written_on_the_input_geometry(ct_run: BaselineSummary, ct3mm: dict[str, Path]) -> None:
    assert ct_run.cases == ["ct"]
    pred_path = ct_run.out_dir / "predictions" / "ct.nii.gz"
    assert ct_run.predictions == [pred_path]
    pred, ct = sitk.ReadImage(str(pred_path)), sitk.ReadImage(str(ct3mm["image"]))
    assert pred.GetSize() == ct.GetSize() == (122, 101, 30)
    assert pred.GetSpacing() == ct.GetSpacing()
    assert pred.GetOrigin() == ct.GetOrigin()
    assert pred.GetDirection() == ct.GetDirection()
    assert pred.GetPixelID() == sitk.sitkUInt8


def test_metrics_have_one_row_per_present_organ(ct_run: BaselineSummary, ct3mm: dict[str, Path]) -> None:
    gt = _array(ct3mm["labels"])
    pred = _array(ct_run.out_dir / "predictions" / "ct.nii.gz")
    present = [int(i) for i in np.unique(gt) if i != 0]
    assert present == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13]  # no esophagus in this scan
    with (ct_run.out_dir / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["organ_id"]) for r in rows] == present
    for row in rows:
        a, b = gt == int(row["organ_id"]), pred == int(row["organ_id"])
        assert int(row["gt_voxels"]) == int(a.sum())
        assert int(row["pred_voxels"]) == int(b.sum())
        dice = 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
        assert float(row["dice"]) == pytest.approx(dice, abs=1e-5)
    assert (ct_run.out_dir / "metrics.json").is_file()
    assert "overlays/ct.png" in (ct_run.out_dir / "report.md").read_text()
    assert (ct_run.out_dir / "overlays" / "ct.png").stat().st_size > 1000


def test_prompts_do_not_leak_beyond_ground_truth_slices(ct_run: BaselineSummary, ct3mm: dict[str, Path]) -> None:
    gt = _array(ct3mm["labels"])
    pred = _array(ct_run.out_dir / "predictions" / "ct.nii.gz")
    assert pred.any()
    for organ in range(1, 14):
        gt_z = set(np.nonzero((gt == organ).any(axis=(1, 2)))[0])
        pred_z = set(np.nonzero((pred == organ).any(axis=(1, 2)))[0])
        assert pred_z <= gt_z, f"organ {organ} predicted on slices without it: {sorted(pred_z - gt_z)}"
    # one prompt per (slice, organ) of the ground truth (nearest upsampling 122 -> 128 keeps every organ)
    expected = sum(len(set(np.unique(gt[z])) - {0}) for z in range(gt.shape[0]))
    assert expected == 267
    assert ct_run.prompts == {"ct": expected}
    meta = json.loads((ct_run.out_dir / "baseline.json").read_text())
    assert meta["cases"]["ct"]["prompts"] == expected and meta["cases"]["ct"]["slices"] == 30
    assert meta["prompt"] == "box" and meta["box_iou"] == 0.5 and meta["normalization"] == "sam"
    assert meta["image_size"] == 128 and meta["slices"]["size"] == 128


def test_existing_output_is_not_overwritten(ct_run: BaselineSummary, ct3mm: dict[str, Path]) -> None:
    before = (ct_run.out_dir / "metrics.csv").read_bytes()
    with pytest.raises(OutputExistsError):
        run_baseline(ct3mm["image"], ct_run.out_dir, BaselineConfig(prompt="point1", weights="random", arch="tiny",
                                                                    labels=ct3mm["labels"], device="cpu"))
    assert (ct_run.out_dir / "metrics.csv").read_bytes() == before


def test_named_subset_prompts_its_source_organs() -> None:
    btcv = load_label_map("btcv")
    assert prompt_organs(btcv, None) == list(range(1, 14))
    assert prompt_organs(btcv, [6, "spleen"]) == [6, 1]
    # Table 1 merges the two adrenal glands into one column; both are prompted separately
    assert prompt_organs(btcv, "btcv-table1") == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert prompt_organs(btcv, "paper-8") == [1, 2, 3, 4, 6, 7, 8, 11]


def test_prepared_cache_split_and_original_geometry(tmp_path: Path) -> None:
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset

    source = write_phantom_dataset(tmp_path / "raw", n_cases=2, layout="btcv", seed=0, shape=(8, 40, 40),
                                   spacing_mm=(5.0, 4.0, 4.0))
    cache = tmp_path / "cache"
    prepare_dataset(source, cache, PrepareOptions(settings=SliceSettings(size=48), split="none"))
    with pytest.raises(InputError, match="split 'test' is empty"):  # --split none: everything is train
        run_baseline(cache, tmp_path / "bad", BaselineConfig(arch="tiny", split="test", device="cpu"))
    with pytest.raises(InputError, match="no split 'val' \\(available: train, test\\)"):
        run_baseline(cache, tmp_path / "bad", BaselineConfig(arch="tiny", split="val", device="cpu"))
    with pytest.raises(InputError, match=r"unknown case id\(s\) \['9999'\]"):
        run_baseline(cache, tmp_path / "bad", BaselineConfig(arch="tiny", cases=["9999"], device="cpu"))
    with pytest.raises(InputError, match="no cases selected"):
        run_baseline(cache, tmp_path / "bad", BaselineConfig(arch="tiny", cases=[], device="cpu"))
    assert not (tmp_path / "bad").exists()
    config = BaselineConfig(prompt="point3", weights="random", arch="tiny", cases=["0002"], organs=[1, 6],
                            device="cpu", overlays=False)
    summary = run_baseline(cache, tmp_path / "out", config)
    assert summary.cases == ["0002"]
    pred = sitk.ReadImage(str(summary.predictions[0]))
    image = sitk.ReadImage(str(source / "img" / "img0002.nii.gz"))
    assert (pred.GetSize(), pred.GetSpacing(), pred.GetOrigin()) == (image.GetSize(), image.GetSpacing(),
                                                                      image.GetOrigin())
    meta = json.loads((tmp_path / "out" / "baseline.json").read_text())
    assert meta["prepared_cache"] and meta["slices"]["size"] == 48 and meta["organ_ids"] == [1, 6]
    assert meta["cases"]["0002"]["ground_truth"].endswith("label0002.nii.gz")
    with (tmp_path / "out" / "metrics.csv").open(newline="") as fh:
        assert [int(r["organ_id"]) for r in csv.DictReader(fh)] == [1, 6]
    gt = _array(source / "label" / "label0002.nii.gz")
    assert set(np.unique(_array(summary.predictions[0]))) <= {0, 1, 6}
    assert summary.prompts["0002"] == sum(int((gt[z] == o).any()) for z in range(gt.shape[0]) for o in (1, 6))


def test_dicom_labels_are_paired_by_geometry_before_prompting(ct_dicom: dict[str, Path]) -> None:
    from ragsam.baselines.sources import raw_cases

    cases, skipped = raw_cases(ct_dicom["image"], labels=ct_dicom["labels"], slice_settings=SliceSettings(size=128))
    assert [c.case_id for c in cases] == ["dicom"] and skipped == []
    stack = cases[0].load()
    hu = stack.images * 400.0 - 125.0  # the default window (-125, 275) HU -> [0, 1]
    # measured: spleen 78 HU, aorta 150 HU (contrast); with the label rows flipped: -67 HU and -1 HU
    for organ, low, high in ((1, 40.0, 250.0), (8, 100.0, 300.0)):
        inside = stack.labels == organ
        assert low < float(np.median(hu[inside])) < high
        assert float(np.median(hu[:, ::-1][inside])) < 20.0  # index pairing would prompt on other tissue


class _BoxOracle(torch.nn.Module):
    """Stands in for ``SamModel``: logit ``1 + k/100`` at pixel centres inside the k-th box, else -1.

    Its masks are at the full input resolution, so with slice size == input size every
    resize in :func:`decode_organs` is the identity and the prediction is exactly the boxes.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        frame = SimpleNamespace(image_size=size)
        self.config = SimpleNamespace(vision_config=frame, prompt_encoder_config=frame)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # where the model lives

    def get_image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.zeros(pixels.shape[0], 1, 1, 1)

    def forward(self, image_embeddings: torch.Tensor, multimask_output: bool, input_boxes: torch.Tensor,
                ) -> SimpleNamespace:
        boxes = input_boxes[0] + 0.5  # the prompt encoder's "pixel centre" shift: back to continuous units
        centres = torch.arange(self.size) + 0.5
        in_x = (centres[None] >= boxes[:, 0:1]) & (centres[None] <= boxes[:, 2:3])
        in_y = (centres[None] >= boxes[:, 1:2]) & (centres[None] <= boxes[:, 3:4])
        rank = 1.0 + torch.arange(len(boxes))[:, None, None] / 100.0
        logits = torch.where(in_y[:, :, None] & in_x[:, None, :], rank, torch.tensor(-1.0))
        return SimpleNamespace(pred_masks=logits[None, :, None], iou_scores=torch.ones(1, len(boxes), 1))


def test_tight_box_prompts_come_back_as_boxes_on_the_original_grid(ct3mm: dict[str, Path]) -> None:
    """Frames end to end: canonical reorientation, 122x101 -> 128 slices, prompt coordinates, and back."""
    from ragsam.baselines.prompted import PromptSettings, segment_slices
    from ragsam.baselines.sources import raw_cases
    from ragsam.data.slices import slices_to_volume

    cases, _ = raw_cases(ct3mm["image"], labels=ct3mm["labels"], slice_settings=SliceSettings(size=128))
    stack = cases[0].load()
    organs = list(range(1, 14))
    pred, _ = segment_slices(_BoxOracle(128), stack.images, stack.labels, organs,
                             PromptSettings(kind="box", box_iou=1.0), "ct")
    volume = slices_to_volume(pred, stack.grid)
    gt = _array(ct3mm["labels"])
    expected = np.zeros_like(gt)
    for z in range(gt.shape[0]):
        for organ in organs:  # later organs win overlaps (higher oracle logit)
            ys, xs = np.nonzero(gt[z] == organ)
            if ys.size:
                expected[z, ys.min():ys.max() + 1, xs.min():xs.max() + 1] = organ
    np.testing.assert_array_equal(volume, expected)


def _baseline_fields(cache: str, out: str) -> tuple:
    s = run_baseline(cache, out, BaselineConfig(prompt="point3", weights="random", arch="tiny", device="cpu", seed=0))
    return s.cases, s.prompts, [(r.case_id, r.organ_id, r.dice) for r in s.evaluation.rows]


def _without_timings(meta: dict) -> dict:
    meta.pop("seconds")
    for case in meta["cases"].values():
        case.pop("seconds")
    return meta


def test_two_gloo_ranks_write_the_folder_one_process_writes(tmp_path: Path, monkeypatch) -> None:
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from two_ranks import run_ranks

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    source = write_phantom_dataset(tmp_path / "raw", n_cases=3, layout="btcv", seed=0, shape=(6, 40, 40),
                                   spacing_mm=(5.0, 4.0, 4.0))
    cache = prepare_dataset(source, tmp_path / "cache", PrepareOptions(settings=SliceSettings(size=48), split="none")).out_dir
    one = _baseline_fields(str(cache), str(tmp_path / "one"))
    assert len(one[0]) == 3 and len(one[2]) > 0
    assert run_ranks(_baseline_fields, str(cache), str(tmp_path / "two")) == {0: ("ok", one), 1: ("ok", one)}
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for name in files:
        a = (tmp_path / "one" / name).read_bytes()
        b = (tmp_path / "two" / name).read_bytes().replace(str(tmp_path / "two").encode(), str(tmp_path / "one").encode())
        if name.name == "baseline.json":
            a, b = (_without_timings(json.loads(x)) for x in (a, b))
        assert a == b, name
