"""``RunInfo``: a run folder's configuration and val.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragsam.config import dump_config
from ragsam.errors import InputError
from ragsam.training import load_train_config
from ragsam.training.run_info import RunFiles, RunInfo

HISTORY = [{"iteration": 2, "mean_dice": 0.25}, {"iteration": 4, "mean_dice": 0.5}]


@pytest.fixture()
def run_dir(tmp_path):
    cfg = load_train_config("tiny", ["seed=7"])
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    return tmp_path


def test_without_val_json_there_is_no_validation(run_dir) -> None:
    info = RunInfo.read(run_dir)
    assert info.config is not None and info.config.seed == 7
    assert not info.validated and info.history == [] and info.best_dice == -1.0


def test_round_trip_and_the_current_file(run_dir) -> None:
    RunInfo(best_iteration=4, best_dice=0.5, history=HISTORY).write_val(run_dir)
    assert json.loads((run_dir / "val.json").read_text()) == {
        "format_version": 1, "best": {"iteration": 4, "mean_dice": 0.5}, "history": HISTORY}
    info = RunInfo.read(run_dir)
    assert info.validated and (info.best_iteration, info.best_dice, info.history) == (4, 0.5, HISTORY)
    # val.json as written before versions were recorded: version 1
    (run_dir / "val.json").write_text(json.dumps({"best": {"iteration": 2, "mean_dice": 0.25}, "history": HISTORY}))
    assert RunInfo.read(run_dir).format_version == 1 and RunInfo.read(run_dir).best_iteration == 2


def test_refusals(run_dir, tmp_path_factory) -> None:
    (run_dir / "val.json").write_text(json.dumps({"format_version": 9, "best": {}}))
    with pytest.raises(InputError, match=r"val.json: format version 9 is written by a newer ragsam .*"
                                         r"train the run again with `ragsam train --force`"):
        RunInfo.read(run_dir)
    (run_dir / "val.json").write_text(json.dumps({"best": {"mean_dice": "high"}}))
    with pytest.raises(InputError, match="val.json: malformed validation record"):
        RunInfo.read(run_dir)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(InputError, match="not a ragsam run folder \\(no config.yaml\\)"):
        RunInfo.read(empty)
    with pytest.raises(InputError, match="run folder does not exist"):
        RunInfo.read_config(empty / "gone")


def test_requested_config_new_and_resumed(tmp_path) -> None:
    from ragsam.training.run import requested_config

    run = tmp_path / "run"
    cfg = requested_config("tiny", ["seed=3"], run, resume=False)
    assert cfg is not None and cfg.seed == 3
    assert requested_config(None, [], run, resume=True) is None  # train() reads the run's own config
    assert requested_config(None, ["seed=4"], run, resume=True) is None  # no config.yaml yet: train() asks
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg))
    again = requested_config(None, ["log.every=7"], run, resume=True)  # the run's own config + overrides
    assert again is not None and again.seed == 3 and again.log.every == 7
    given = requested_config("tiny", [], run, resume=True)  # an explicit --config wins (train() compares)
    assert given is not None and given.seed != 3


def test_run_files_probe_names_each_file(tmp_path: Path) -> None:


    assert RunFiles.probe(tmp_path / "absent") == RunFiles(False, False, False, False, False)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "model.safetensors", "checkpoints/state.pt"):
        (run / name).write_bytes(b"")
    (run / "last.safetensors").mkdir()  # a folder is not the file
    files = RunFiles.probe(run)
    assert (files.config, files.weights, files.last, files.checkpoint, files.validation) == (
        True, True, False, True, False)
