"""Hybrid fusion of fine-tuned and retrieval probabilities (ragsam.retrieval.hybrid)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bank_fixtures import write_prepared

from ragsam.config import dump_config
from ragsam.data.slices import SliceSettings, volume_to_slices
from ragsam.data.volume import read_image, read_labels
from ragsam.errors import InputError
from ragsam.inference.rag_segment import SegmenterOptions, segment_volume
from ragsam.retrieval.bank import BankOptions, build_bank
from ragsam.retrieval.hybrid import fuse_slice
from ragsam.retrieval.segment import SegmentOptions


def test_fuse_slice_hand_computed():
    p_ft = torch.tensor([[[0.5]], [[0.3]], [[0.2]]])  # background, organ 1, organ 2 at one pixel
    p_rag = torch.tensor([[[0.9]], [[0.4]]])  # retrieval: organ 2 -> 0.9, organ 7 (unknown to the run) -> 0.4
    fused = fuse_slice(p_ft, [2, 7], p_rag, 0.5)
    # organ 2: 0.5*0.2 + 0.5*0.9; background: 0.5*0.5 + 0.5*(1 - 0.9); organ 1 (not retrieved) unchanged
    assert fused[:, 0, 0].tolist() == pytest.approx([0.3, 0.3, 0.55])
    assert int(fused.argmax(0)) == 2 and int(p_ft.argmax(0)) == 0
    assert torch.equal(fuse_slice(p_ft, [2], p_rag[:1], 0.0), p_ft)
    assert torch.equal(fuse_slice(p_ft, [], p_rag[:0], 1.0), p_ft)
    with pytest.raises(InputError, match="hybrid weight"):
        fuse_slice(p_ft, [2], p_rag[:1], 1.5)
    # retrieval maps at another size are resized to the run's slices
    big = fuse_slice(torch.full((3, 4, 4), 1 / 3), [1], torch.ones(1, 2, 2), 1.0)
    assert torch.allclose(big[1], torch.ones(4, 4)) and torch.allclose(big[0], torch.zeros(4, 4))


@pytest.fixture(scope="module")
def setup(ct3mm, tmp_path_factory):
    from ragsam.models import build_model
    from ragsam.peft.apply import save_trainable
    from ragsam.training.config import TrainConfig
    from ragsam.utils.seeding import seed_everything

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hybrid")
    image = read_image(ct3mm["image"])
    stack = volume_to_slices(image, read_labels(ct3mm["labels"], reference=image), SliceSettings(size=32))
    prepared = write_prepared(root / "prepared", {"ct3mm": (stack.images, stack.labels)})
    build_bank(prepared, root / "bank", BankOptions(embedder_weights="tiny", image_size=28))
    # a "finished run" of the tiny SAM, written the way ragsam train leaves it
    cfg = TrainConfig()
    cfg.model.arch, cfg.model.weights, cfg.model.image_size, cfg.model.num_classes = "tiny", "random", 64, 13
    cfg.data.window, cfg.seed, cfg.device = [-125.0, 275.0], 3, "cpu"
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    seed_everything(cfg.seed)
    save_trainable(build_model(cfg.model), run / "model.safetensors")
    yield {"root": root, "bank": root / "bank", "run": run, "image": ct3mm["image"]}
    torch.set_num_threads(threads)


def test_weight_zero_equals_the_fine_tuned_prediction(setup):
    from ragsam.inference import PredictOptions, predict

    root = setup["root"]
    predict(setup["run"], setup["image"], root / "ft.nii.gz", PredictOptions(device="cpu"))
    summary = segment_volume(setup["image"], root / "h0.nii.gz", setup["bank"], SegmenterOptions("tiny", device="cpu"),
                             SegmentOptions(k=2, run_dir=setup["run"], hybrid_weight=0.0))
    assert summary.run == str(setup["run"]) and summary.hybrid_weight == 0.0
    ft = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "ft.nii.gz")))
    h0 = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "h0.nii.gz")))
    assert np.array_equal(ft, h0)
    segment_volume(setup["image"], root / "h1.nii.gz", setup["bank"], SegmenterOptions("tiny", device="cpu"),
                   SegmentOptions(k=2, run_dir=setup["run"], hybrid_weight=1.0))
    h1 = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "h1.nii.gz")))
    assert h1.shape == ft.shape and not np.array_equal(h1, ft)
    with pytest.raises(InputError, match="no config.yaml"):
        segment_volume(setup["image"], root / "x.nii.gz", setup["bank"], SegmenterOptions("tiny"),
                       SegmentOptions(run_dir=setup["bank"]))
