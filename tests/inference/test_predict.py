"""Prediction with a trained run: exact agreement with the slice pipeline, outputs, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ragsam.errors import InputError, OutputExistsError
from ragsam.inference import load_run, predict
from ragsam.training import load_train_config, train

TRAIN = ["model.image_size=32", "optim.max_iterations=2", "optim.warmup=1", "optim.batch_size=4", "val.every=2",
         "checkpoint_every=2", "log.tensorboard=false", "log.progress=false", "device=cpu",
         "data.train=['0001']", "data.val=['0002']"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import prepare_dataset
    from ragsam.data.slices import SliceSettings

    root = tmp_path_factory.mktemp("predict")
    # 40 x 36 in-plane: not the model's 32 px, so predictions are resized back bilinearly.
    write_phantom_dataset(root / "src", n_cases=2, shape=(5, 36, 40), seed=3)
    prepare_dataset(root / "src", root / "prep", SliceSettings(size=32), split="none")
    full = train(load_train_config("tiny", [f"data.prepared={root / 'prep'}", *TRAIN]), root / "run")
    lora = train(load_train_config("tiny", [f"data.prepared={root / 'prep'}", *TRAIN, "model.peft.method=lora",
                                            "model.peft.decoder=lora", "optim.lr=0.05"]), root / "lora")
    return {"src": root / "src", "prep": root / "prep", "run": full, "lora": lora}


def test_predict_equals_the_slice_pipeline_on_the_input_grid(setup, tmp_path):
    from ragsam.data.slices import SliceSettings, slices_to_volume, volume_to_slices
    from ragsam.data.volume import read_image, read_labels

    image_path = setup["src"] / "img" / "img0001.nii.gz"
    [res] = predict(setup["run"], image_path, tmp_path / "out", device="cpu", batch_size=2)
    assert res.path == tmp_path / "out" / f"{res.case_id}.nii.gz" and res.slices == 5
    image = read_image(image_path)
    written = read_labels(res.path)
    assert written.geometry.size == image.geometry.size == (40, 36, 5)
    assert np.allclose(written.geometry.spacing, image.geometry.spacing)
    assert np.allclose(written.geometry.origin, image.geometry.origin, atol=1e-4)
    # the same pipeline by hand (batch of all slices at once: batching must not matter)
    model, cfg = load_run(setup["run"])
    stack = volume_to_slices(image, None, SliceSettings(tuple(cfg.data.window), 32, 0))
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(stack.model_input(channels=3))), dim=1)
    expected = slices_to_volume(probs, stack.grid)
    assert np.array_equal(written.array, expected)
    assert res.organs == sorted(int(v) for v in np.unique(expected) if v)


def test_load_run_reproduces_the_validation_score_and_merge_keeps_outputs(setup):
    from ragsam.training.data import build_data
    from ragsam.training.distributed import DistInfo
    from ragsam.training.validate import validate

    info = DistInfo(0, 1, 0, torch.device("cpu"))
    for name in ("run", "lora"):
        model, cfg = load_run(setup[name])  # LoRA run: frozen random base rebuilt from the seed
        data = build_data(cfg)
        recorded = json.loads((setup[name] / "val.json").read_text())["history"][-1]["mean_dice"]
        assert validate(model, data.dataset, data.val_cases, cfg.model.num_classes, cfg.val.batch_size, info).mean_dice == recorded
    x = torch.rand(2, 3, 32, 32)
    plain, _ = load_run(setup["lora"])
    merged, _ = load_run(setup["lora"], merge=True)
    with torch.no_grad():
        assert torch.allclose(plain(x), merged(x), atol=1e-4)


def test_dataset_folder_outputs_and_force(setup, tmp_path):
    out = tmp_path / "preds"
    results = predict(setup["run"], setup["src"], out, device="cpu")
    assert [r.path.name for r in results] == ["0001.nii.gz", "0002.nii.gz"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputExistsError):
        predict(setup["run"], setup["src"], out, device="cpu")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    predict(setup["run"], setup["src"], out, device="cpu", force=True)
    single = predict(setup["run"], setup["src"] / "img" / "img0002.nii.gz", tmp_path / "one.nii.gz", device="cpu")
    assert single[0].path == tmp_path / "one.nii.gz"
    assert (tmp_path / "one.nii.gz").read_bytes() == before["0002.nii.gz"]


def test_bad_runs_are_refused(setup, tmp_path):
    with pytest.raises(InputError, match="not a ragsam run folder"):
        predict(tmp_path, setup["src"], tmp_path / "o")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((setup["run"] / "config.yaml").read_text())
    with pytest.raises(InputError, match="has not finished"):
        load_run(unfinished)
    with pytest.raises(InputError, match="does not exist"):
        predict(setup["run"], tmp_path / "missing.nii.gz", tmp_path / "o")


def test_dicom_series_folder_is_segmented_on_its_own_grid(setup, ct_dicom, tmp_path):
    from ragsam.data.volume import read_image, read_labels

    [res] = predict(setup["run"], ct_dicom["image"], tmp_path / "dicom", device="cpu", batch_size=8)
    written, image = read_labels(res.path), read_image(ct_dicom["image"])
    assert res.slices == 20 and written.geometry.size == image.geometry.size == (512, 512, 20)
    assert np.allclose(written.geometry.direction, image.geometry.direction, atol=1e-6)
    assert np.allclose(written.geometry.origin, image.geometry.origin, atol=1e-3)


def test_labels_path_equals_argmax_of_probabilities():
    """The memory-light label path gives exactly the argmax of the stored softmax."""
    import numpy as np
    import torch

    from ragsam.inference.predict import predict_labels, predict_probabilities
    from ragsam.models import ModelConfig, PeftConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="tiny", weights="random", num_classes=4, image_size=64,
                                    peft=PeftConfig(method="none"))).eval()
    images = np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)
    labels = predict_labels(model, images, batch_size=2)
    probs = predict_probabilities(model, images, batch_size=3)
    assert labels.dtype == torch.uint8 and labels.shape == (5, 64, 64)
    assert torch.equal(labels.long(), probs.argmax(1).cpu())
    assert len(torch.unique(labels)) > 1
