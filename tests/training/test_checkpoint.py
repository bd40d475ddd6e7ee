"""state.pt: safe loading, refusal of foreign/corrupt/pickled files, RNG round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ragsam.errors import InputError
from ragsam.training.checkpoint import (
    load_state,
    load_trainable_tensors,
    rng_state,
    save_state,
    set_rng_state,
)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_rng_round_trip():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    opt = torch.optim.AdamW([model.weight], lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / "checkpoints" / "state.pt"
    save_state(path, iteration=7, model=model, optimizer=opt, schedule={"base_lr": 0.1}, stream={"epoch": 1},
               best={"score": 0.5}, history=[{"iteration": 5}], done=False)
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]  # no temporary left behind
    state = load_state(path)
    assert state["iteration"] == 7 and list(state["model"]) == ["weight"]
    other = torch.nn.Linear(3, 2)
    other.bias.requires_grad_(False)
    load_trainable_tensors(other, state["model"], path)
    assert torch.equal(other.weight, model.weight)
    opt2 = torch.optim.AdamW([other.weight], lr=0.1)
    opt2.load_state_dict(state["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_refuses_pickled_code(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"format": "ragsam-train-state", "x": _Evil()}, path)
    with pytest.raises(InputError, match="refusing to unpickle") as exc:
        load_state(path)
    assert str(path) in str(exc.value)


def test_refuses_corrupt_foreign_and_missing(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_state(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(InputError, match="not a ragsam training checkpoint"):
        load_state(foreign)
    with pytest.raises(InputError, match="no checkpoint to resume from"):
        load_state(tmp_path / "missing.pt")


def test_trainable_key_mismatch_is_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(InputError, match="missing"):
        load_trainable_tensors(model, {"weight": torch.zeros(2, 2)}, tmp_path / "s.pt")
    with pytest.raises(InputError, match="shape"):
        load_trainable_tensors(model, {"weight": torch.zeros(3, 2), "bias": torch.zeros(2)}, tmp_path / "s.pt")
