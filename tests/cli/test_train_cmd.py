"""``ragsam train`` on the command line: success, refusal without --force, resume, bad input."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ragsam.cli.main import run_cli

ARGS = ["model.image_size=32", "optim.max_iterations=2", "optim.warmup=1", "optim.batch_size=4",
        "checkpoint_every=1", "log.tensorboard=false", "device=cpu"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings

    root = tmp_path_factory.mktemp("train_cmd")
    write_phantom_dataset(root / "src", n_cases=1, shape=(4, 32, 32), seed=4)
    prepare_dataset(root / "src", root / "prep", PrepareOptions(settings=SliceSettings(size=32), split="none"))
    return root / "prep"


def test_train_resume_and_force(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--config", "tiny", "--prepared", str(prepared), "--out", str(run), *ARGS]
    assert run_cli(argv) == 0
    assert f"run finished: {run}" in capsys.readouterr().out
    assert (run / "model.safetensors").is_file() and (run / "checkpoints" / "state.pt").is_file()
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"ragsam: error: {run}: already exists (use --force to overwrite)"
    before = load_file(run / "last.safetensors")
    assert run_cli(["train", "--out", str(run), "--resume"]) == 0  # finished: nothing left to do
    after = load_file(run / "last.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert run_cli([*argv, "--force"]) == 0
    assert run_cli([*argv, "--force", "--resume"]) == 2


@pytest.mark.parametrize("extra, needle", [
    (["optim.lerning_rate=1"], "unknown configuration key 'optim.lerning_rate'"),
    (["model.arch=vit_giant"], "vit_giant"),
    (["model.num_classes=2"], "exceed model.num_classes=2"),
    (["data.context=3"], "context"),
])
def test_bad_input_is_one_line_exit_2(prepared, tmp_path, capsys, extra, needle):
    code = run_cli(["train", "--config", "tiny", "--prepared", str(prepared), "--out", str(tmp_path / "r"),
                    *ARGS, *extra])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_missing_cache_and_bad_checkpoint(prepared, tmp_path, capsys):
    assert run_cli(["train", "--config", "tiny", "--prepared", str(tmp_path / "none"), "--out",
                    str(tmp_path / "r"), *ARGS]) == 2
    assert "prepare.json" in capsys.readouterr().err
    run = tmp_path / "r2"
    assert run_cli(["train", "--config", "tiny", "--prepared", str(prepared), "--out", str(run), *ARGS]) == 0
    (run / "checkpoints" / "state.pt").write_bytes(b"not a checkpoint")
    assert run_cli(["train", "--out", str(run), "--resume"]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
