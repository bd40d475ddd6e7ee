"""End-to-end training on a tiny prepared phantom cache: run folder, exact resume, bad inputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ragsam.errors import InputError, OutputExistsError
from ragsam.training import load_train_config, train
from ragsam.training.checkpoint import load_state

BASE = ["model.image_size=32", "optim.max_iterations=8", "optim.warmup=2", "optim.batch_size=3",
        "optim.grad_accum=2", "checkpoint_every=2", "val.every=4", "log.every=1", "log.tensorboard=false",
        "log.progress=false", "device=cpu", "data.train=['0001','0002']", "data.val=['0003']"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings

    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root / "src", n_cases=3, shape=(6, 32, 32), seed=1)
    prepare_dataset(root / "src", root / "prep", PrepareOptions(settings=SliceSettings(size=32), split="none"))
    return root / "prep"


def _cfg(cache: Path, *extra: str):
    return load_train_config("tiny", [f"data.prepared={cache}", *BASE, *extra])


def _rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


@pytest.fixture
def one_thread():
    """MKL may pick fewer threads under load (changing float sums); one thread pins the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_killed_and_resumed_run_equals_uninterrupted(cache, tmp_path, one_thread):
    torch.manual_seed(0)
    full = train(_cfg(cache), tmp_path / "full")
    part = train(_cfg(cache), tmp_path / "part", stop_after=4)
    assert load_state(part / "checkpoints" / "state.pt")["iteration"] == 4
    assert not (part / "last.safetensors").exists()  # a killed run has no final weights
    train(None, part, resume=True)
    for name in ("last.safetensors", "model.safetensors"):
        a, b = load_file(full / name), load_file(part / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((full / "val.json").read_text()) == json.loads((part / "val.json").read_text())
    rows = _rows(full / "log.csv")
    assert rows == _rows(part / "log.csv") and [int(r["iteration"]) for r in rows] == list(range(1, 9))
    # the weights moved and the run folder is complete and self-describing
    state = load_state(full / "checkpoints" / "state.pt")
    assert state["done"] and state["iteration"] == 8
    cfg = load_train_config(full / "config.yaml")
    assert cfg.model.arch == "tiny" and cfg.data.window == [-125.0, 275.0] and cfg.data.size == 32
    from ragsam.models import build_model, load_trainable

    torch.manual_seed(123)
    model = build_model(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meta = load_trainable(model, full / "last.safetensors")
    assert meta["iteration"] == "8" and meta["arch"] == "tiny"
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_early_stopping_after_patience_validations_without_improvement(cache, tmp_path):
    # lr 1e-9: the weights (and so the scores) stay put, so the 2nd and 3rd validations do not improve
    run = train(_cfg(cache, "optim.max_iterations=6", "optim.grad_accum=1", "val.every=1", "val.patience=2",
                     "optim.lr=1e-9"), tmp_path / "run")
    history = json.loads((run / "val.json").read_text())["history"]
    best, since, stop = -1.0, 0, 6
    for h in history:  # replay the rule on the recorded scores
        score = h["mean_dice"] if h["mean_dice"] is not None else -1.0
        best, since = (score, 0) if score > best else (best, since + 1)
        if since >= 2:
            stop = h["iteration"]
            break
    assert stop == 3 and history[-1]["iteration"] == 3
    state = load_state(run / "checkpoints" / "state.pt")
    assert state["iteration"] == 3 and state["done"] and state["best"]["iteration"] == 1
    assert load_file(run / "model.safetensors").keys() == load_file(run / "last.safetensors").keys()


def test_existing_folder_needs_force_or_resume(cache, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError):
        train(_cfg(cache, "optim.max_iterations=1"), run)
    train(_cfg(cache, "optim.max_iterations=1"), run, force=True)
    assert (run / "model.safetensors").is_file() and (run / "notes.txt").read_text() == "keep me"
    with pytest.raises(InputError, match="no config.yaml .* give its --config"):
        train(None, tmp_path / "elsewhere", resume=True)
    with pytest.raises(InputError, match="not a ragsam run folder"):
        train(_cfg(cache), tmp_path, resume=True)  # holds other things, no config.yaml
    with pytest.raises(InputError, match="different configuration"):
        train(_cfg(cache, "optim.max_iterations=1", "optim.lr=0.5"), run, resume=True)


def test_resume_refuses_corrupt_or_pickled_checkpoint(cache, tmp_path):
    run = train(_cfg(cache, "optim.max_iterations=2"), tmp_path / "run", stop_after=2)
    state = run / "checkpoints" / "state.pt"
    shutil.copy(state, tmp_path / "good.pt")
    state.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="not a readable checkpoint") as exc:
        train(None, run, resume=True)
    assert str(state) in str(exc.value)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "ragsam-train-state", "payload": Evil()}, state)
    with pytest.raises(InputError, match="refusing to unpickle"):
        train(None, run, resume=True)


def test_label_ids_beyond_model_classes_and_unknown_arch(cache, tmp_path):
    with pytest.raises(InputError, match=r"label ids \[.*\] exceed model.num_classes=3") as exc:
        train(_cfg(cache, "model.num_classes=3"), tmp_path / "a")
    assert str(cache) in str(exc.value)
    with pytest.raises(InputError, match="vit_giant"):
        train(_cfg(cache, "model.arch=vit_giant"), tmp_path / "b")
    with pytest.raises(InputError, match="neither a split"):
        train(_cfg(cache, "data.val=[nope]"), tmp_path / "c")
    assert not (tmp_path / "a" / "config.yaml").exists()


def _same_weights(a: Path, b: Path) -> bool:
    ta, tb = load_file(a / "last.safetensors"), load_file(b / "last.safetensors")
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_worker_processes_and_resume_across_them_leave_the_run_bit_identical(cache, tmp_path, one_thread):
    b5 = "optim.batch_size=5"  # 12 training slices: batches of 5, 5, 2 per epoch
    cfg = _cfg(cache, b5, "data.num_workers=0")
    assert cfg.augment.enabled and cfg.augment.rot_flip_p > 0  # loading AND augmentation move to the workers
    main = train(cfg, tmp_path / "main")
    workers = train(_cfg(cache, b5, "data.num_workers=2"), tmp_path / "workers")
    assert _same_weights(main, workers) and _rows(main / "log.csv") == _rows(workers / "log.csv")
    # killed with 2 workers in mid-epoch (2 batches per step), resumed in the main process
    part = train(_cfg(cache, b5, "data.num_workers=2"), tmp_path / "part", stop_after=4)
    assert load_state(part / "checkpoints" / "state.pt")["stream"] == {"epoch": 2, "batch": 2, "world": 1}
    train(_cfg(cache, b5, "data.num_workers=0"), part, resume=True)  # num_workers may change on resume
    assert _same_weights(main, part)
    unaugmented = train(_cfg(cache, b5, "augment.enabled=false"), tmp_path / "plain")
    assert not _same_weights(main, unaugmented)  # the augmentation did shape these weights


def test_bf16_cpu_autocasts_training_only_on_cpus_with_native_bf16(cache, tmp_path, one_thread, monkeypatch):
    from ragsam.utils import precision

    short = ("optim.max_iterations=2", "val.every=0")
    fp32 = train(_cfg(cache, *short), tmp_path / "fp32")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert _same_weights(fp32, train(_cfg(cache, *short, "optim.bf16_cpu=true"), tmp_path / "no_native"))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    run = train(_cfg(cache, *short, "optim.bf16_cpu=true"), tmp_path / "bf16")
    assert not _same_weights(fp32, run)  # the forward ran in bf16
    assert load_train_config(run / "config.yaml").optim.bf16_cpu is True
    assert _same_weights(fp32, train(_cfg(cache, *short, "optim.bf16_cpu=true", "optim.bf16=false"),
                                     tmp_path / "off"))  # optim.bf16=false: fp32 everywhere
    with pytest.raises(InputError, match=r"different configuration \(optim.bf16_cpu\)"):
        train(_cfg(cache, *short), run, resume=True)


def test_samed_recipe_options_train_and_save_the_derived_accumulation(cache, tmp_path, one_thread):
    # SAMed's loss at S/4 against nearest labels, the raw [0, 1] slice, and a global batch of
    # 6 from micro-batches of 3 in one process: 2 micro-batches per step, written to config.yaml.
    cfg = _cfg(cache, "optim.grad_accum=1", "optim.global_batch=6", "optim.loss_resolution=low",
               "model.normalize=none", "optim.max_iterations=4", "val.every=0")
    run = train(cfg, tmp_path / "samed")
    saved = load_train_config(run / "config.yaml")
    assert (saved.optim.grad_accum, saved.optim.global_batch, saved.optim.loss_resolution) == (2, 6, "low")
    rows = _rows(run / "log.csv")
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert all(0.0 < float(r["loss"]) < 5.0 for r in rows)
    # Continuing on 2 processes would mean 1 micro-batch per step: the saved accumulation disagrees.
    from ragsam.training.config import resolve_grad_accum

    with pytest.raises(InputError, match="disagrees"):
        resolve_grad_accum(saved.optim, 2)


def test_non_finite_loss_stops_training_with_one_clear_error(cache, tmp_path):
    """A learning rate that blows the weights up stops the run at the first non-finite step.

    Before, such a run finished "run finished" with NaN tensors saved.
    """
    from ragsam.training.loop import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"training stopped at iteration \d+: the (loss|gradient norm) "
                                             "is not finite") as err:
        train(_cfg(cache, "optim.lr=1e30", "optim.warmup=0", "val.every=0", "data.val=[]"), tmp_path / "run")
    assert isinstance(err.value, InputError)  # exit code 2 on the command line
    state = tmp_path / "run" / "checkpoints" / "state.pt"
    if state.exists():  # any checkpoint written holds finite weights only
        tensors = load_state(state)["trainable"]
        assert all(torch.isfinite(t).all() for t in tensors.values())
    assert not (tmp_path / "run" / "last.safetensors").exists()


@pytest.mark.parametrize("override, needle", [
    ("optim.lr=.inf", "optim.lr=inf must be a finite number"),
    ("optim.lr=.nan", "optim.lr=nan must be a finite number"),
    ("optim.dice_weight=.nan", "optim.dice_weight=nan"),
    ("optim.ce_weight=-1", "optim.ce_weight=-1.0 must be finite numbers >= 0"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1.0 must be a finite number >= 0"),
    ("optim.betas=[2,3]", "optim.betas=[2.0, 3.0] must lie in [0, 1)"),
    ("optim.grad_clip=.inf", "optim.grad_clip=inf"),
    ("optim.max_iterations=true", "optim.max_iterations: True is not a valid int"),
    ("optim.lr=false", "optim.lr: False is not a valid float"),
])
def test_nonsense_optimiser_values_are_refused_at_config_time(override, needle):
    with pytest.raises(InputError) as err:
        load_train_config("tiny", [override])
    assert needle in str(err.value)


def test_yaml_config_with_an_integer_key_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  5: 1\n")
    with pytest.raises(InputError, match=r"configuration key optim\.5 is not a name"):
        load_train_config(path)
