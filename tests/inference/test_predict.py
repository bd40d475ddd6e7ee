"""Prediction with a trained run: exact agreement with the slice pipeline, outputs, refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ragsam.errors import CasesFailedError, InputError, OutputExistsError
from ragsam.inference import PredictOptions, load_run, predict
from ragsam.training import load_train_config, train

TRAIN = ["model.image_size=32", "optim.max_iterations=2", "optim.warmup=1", "optim.batch_size=4", "val.every=2",
         "checkpoint_every=2", "log.tensorboard=false", "log.progress=false", "device=cpu",
         "data.train=['0001']", "data.val=['0002']"]
CPU = PredictOptions(device="cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings

    root = tmp_path_factory.mktemp("predict")
    # 40 x 36 in-plane: not the model's 32 px, so predictions are resized back bilinearly.
    write_phantom_dataset(root / "src", n_cases=2, shape=(5, 36, 40), seed=3)
    prepare_dataset(root / "src", root / "prep", PrepareOptions(settings=SliceSettings(size=32), split="none"))
    full = train(load_train_config("tiny", [f"data.prepared={root / 'prep'}", *TRAIN]), root / "run")
    lora = train(load_train_config("tiny", [f"data.prepared={root / 'prep'}", *TRAIN, "model.peft.method=lora",
                                            "model.peft.decoder=lora", "optim.lr=0.05"]), root / "lora")
    return {"src": root / "src", "prep": root / "prep", "run": full, "lora": lora}


def test_predict_equals_the_slice_pipeline_on_the_input_grid(setup, tmp_path):
    from ragsam.data.slices import SliceSettings, slices_to_volume, volume_to_slices
    from ragsam.data.volume import read_image, read_labels

    image_path = setup["src"] / "img" / "img0001.nii.gz"
    [res] = predict(setup["run"], image_path, tmp_path / "out", PredictOptions(batch_size=2, device="cpu"))
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
    results = predict(setup["run"], setup["src"], out, CPU)
    assert [r.path.name for r in results] == ["0001.nii.gz", "0002.nii.gz"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = predict(setup["run"], setup["src"], out, CPU)  # finished, same inputs and run: skipped
    assert [(r.case_id, r.skipped, r.slices, r.organs) for r in again] == [
        (r.case_id, True, r.slices, r.organs) for r in results]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    (out / "0002.nii.gz").write_bytes(before["0001.nii.gz"])  # not what ragsam wrote for 0002
    with pytest.raises(OutputExistsError, match="0002.nii.gz"):
        predict(setup["run"], setup["src"], out, CPU)
    predict(setup["run"], setup["src"], out, CPU, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    single = predict(setup["run"], setup["src"] / "img" / "img0002.nii.gz", tmp_path / "one.nii.gz", CPU)
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

    [res] = predict(setup["run"], ct_dicom["image"], tmp_path / "dicom", PredictOptions(batch_size=8, device="cpu"))
    written, image = read_labels(res.path), read_image(ct_dicom["image"])
    assert res.slices == 20 and written.geometry.size == image.geometry.size == (512, 512, 20)
    assert np.allclose(written.geometry.direction, image.geometry.direction, atol=1e-6)
    assert np.allclose(written.geometry.origin, image.geometry.origin, atol=1e-3)


def test_labels_path_equals_argmax_of_logits_and_of_untied_probabilities():
    """The memory-light label path: argmax of the logits; the stored softmax's argmax where it is not tied.

    Softmax is monotonic but rounds: a randomly initialised model has logits ~1e-5 apart,
    and where two probabilities round to the same float ``argmax`` of the softmax takes
    the first class while the logits still order them.
    """
    from ragsam.inference.predict import predict_labels, predict_probabilities
    from ragsam.models import ModelConfig, PeftConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="tiny", weights="random", num_classes=4, image_size=64,
                                    peft=PeftConfig(method="none"))).eval()
    images = np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)
    labels = predict_labels(model, images, batch_size=2)
    probs = predict_probabilities(model, images, batch_size=3)
    assert labels.dtype == torch.uint8 and labels.shape == (5, 64, 64)
    with torch.no_grad():
        assert torch.equal(labels.long(), model(torch.from_numpy(images)).argmax(1))
    top2 = probs.topk(2, dim=1).values
    untied = top2[:, 0] > top2[:, 1]
    assert untied.float().mean() > 0.9
    assert torch.equal(labels.long()[untied], probs.argmax(1)[untied])
    assert len(torch.unique(labels)) > 1


def _per_slice(model, stack) -> np.ndarray:
    """The simple path: one slice per forward pass, labels from the whole-volume resize."""
    from ragsam.data.slices import slices_to_volume

    depth, height, width = stack.grid.canonical_shape
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(stack.model_input(z, channels=3)[None])) for z in range(depth)])
    if (height, width) == (stack.grid.size,) * 2:
        return slices_to_volume(logits.argmax(1).to(torch.uint8).numpy(), stack.grid)
    return slices_to_volume(torch.softmax(logits, dim=1), stack.grid)


@pytest.mark.parametrize("overlap", [True, False], ids=["threads", "inline"])
@pytest.mark.parametrize("shape", [(7, 32, 32), (7, 36, 40)], ids=["model-size", "resized"])
def test_pipelined_predict_equals_the_per_slice_path(setup, tmp_path, shape, overlap):
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.slices import SliceSettings, volume_to_slices
    from ragsam.data.volume import read_image, read_labels

    write_phantom_dataset(tmp_path / "src", n_cases=1, shape=shape, seed=11)
    image_path = tmp_path / "src" / "img" / "img0001.nii.gz"
    timings: dict[str, float] = {}
    [res] = predict(setup["run"], image_path, tmp_path / "out.nii.gz",
                    PredictOptions(batch_size=3, device="cpu", overlap=overlap), timings=timings)
    model, cfg = load_run(setup["run"])
    image = read_image(image_path)
    stack = volume_to_slices(image, None, SliceSettings(tuple(cfg.data.window), 32, 0))
    expected = _per_slice(model, stack)
    written = read_labels(res.path).array
    assert written.shape == shape and np.array_equal(written, expected)
    assert res.organs == sorted(int(v) for v in np.unique(expected) if v) and len(res.organs) >= 1
    stages = {"load_run", "read", "slice", "inputs", "forward", "labels", "to_volume", "write", "wall"}
    assert set(timings) == stages and min(timings.values()) > 0


def test_split_forward_is_the_model_forward(setup):
    from ragsam.inference.predict import split_forward

    model, _ = load_run(setup["lora"], merge=True)
    body, head = split_forward(model)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        low = body(x)
        assert low.shape == (3, 14, 8, 8)  # K + 1 = 14 tokens at S / 4
        assert torch.equal(head(low), model(x))  # bit for bit: predict's labels are the model's


def test_failed_write_surfaces_and_leaves_no_file(setup, tmp_path, monkeypatch):
    import SimpleITK as sitk

    calls = []

    def failing_write(image, path, *args, **kwargs):
        calls.append(path)
        Path(path).write_bytes(b"\x1f\x8b half a file")  # what a crash mid-write leaves
        raise RuntimeError("ITK ERROR: NiftiImageIO(0x1): No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    out = tmp_path / "preds"
    with pytest.raises(CasesFailedError) as exc:
        predict(setup["run"], setup["src"], out, CPU)
    assert [cid for cid, _ in exc.value.failures] == ["0001", "0002"] and exc.value.exit_code == 2
    assert re.match(r"ragsam: error: .*0001.nii.gz: cannot be written \(.*No space left on device",
                    exc.value.lines()[0])
    assert len(calls) == 2  # each case tried its own write
    assert list(out.iterdir()) == []  # no output, no temporary file, no sidecar


def test_unreadable_case_read_ahead_surfaces_after_the_previous_case(setup, tmp_path):
    import shutil

    from ragsam.data.volume import read_labels

    src = tmp_path / "src"
    shutil.copytree(setup["src"], src)
    bad = src / "img" / "img0002.nii.gz"
    good = bad.read_bytes()
    bad.write_bytes(good[:200])  # truncated download
    out = tmp_path / "preds"
    with pytest.raises(CasesFailedError) as exc:
        predict(setup["run"], src, out, CPU)
    [(case_id, error)] = exc.value.failures
    assert case_id == "0002" and isinstance(error, InputError) and "img0002.nii.gz: not a readable image" in str(error)
    assert [r.case_id for r in exc.value.results] == ["0001"]
    assert sorted(p.name for p in out.iterdir()) == [".0001.nii.gz.ragsam.json", "0001.nii.gz"]
    assert read_labels(out / "0001.nii.gz").geometry.size == (40, 36, 5)
    bad.write_bytes(good)  # the user fixes the file and reruns: only 0002 runs
    again = predict(setup["run"], src, out, CPU)
    assert [(r.case_id, r.skipped) for r in again] == [("0001", True), ("0002", False)]


@pytest.mark.parametrize(("flag", "native", "expected"), [(True, True, {torch.bfloat16}),
                                                         (False, True, {torch.float32}),
                                                         (True, False, {torch.float32})])
def test_cpu_bf16_flag_reaches_the_autocast(setup, tmp_path, monkeypatch, flag, native, expected):
    import importlib

    from ragsam.cli.main import run_cli
    from ragsam.utils import precision

    predict_module = importlib.import_module("ragsam.inference.predict")  # the package re-exports predict()

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    dtypes: set[torch.dtype] = set()

    def load_run_spy(*args, **kwargs):
        model, cfg = load_run(*args, **kwargs)
        for module in model.modules():  # every linear layer reports the dtype it computed in
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
        return model, cfg

    monkeypatch.setattr(predict_module, "load_run", load_run_spy)
    image = setup["src"] / "img" / "img0001.nii.gz"
    argv = ["predict", str(setup["run"]), str(image), "-o", str(tmp_path / "o.nii.gz"), "--device", "cpu"]
    assert run_cli(argv + (["--cpu-bf16"] if flag else [])) == 0
    assert dtypes == expected


def test_default_overlap_needs_a_free_core_or_a_gpu(monkeypatch):
    import os

    from ragsam.inference.predict import default_overlap

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for threads, expected in [(1, True), (2, False), (4, False)]:
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        assert default_overlap(torch.device("cpu")) is expected
        assert default_overlap(torch.device("cuda")) is True  # the model runs on the GPU: the CPU is free


def _predict_rank(rank: int, world: int, port: int, run: str, src: str, out: str, results) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RAGSAM_THREADS="1")
    import torch.distributed as dist

    try:
        got = predict(run, src, out, CPU)
        results[rank] = [(r.case_id, r.path.name, r.slices, r.organs) for r in got]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_gloo_ranks_write_what_one_process_writes(setup, tmp_path):
    import socket

    import torch.multiprocessing as mp

    one = predict(setup["run"], setup["src"], tmp_path / "one", CPU)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_predict_rank, args=(2, port, str(setup["run"]), str(setup["src"]), str(tmp_path / "two"), results),
             nprocs=2)
    expected = [(r.case_id, r.path.name, r.slices, r.organs) for r in one]
    assert dict(results) == {0: expected, 1: expected}
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in names:
        if not name.endswith(".ragsam.json"):  # sidecars name their own output path
            assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
