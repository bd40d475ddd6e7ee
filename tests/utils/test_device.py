"""The one device rule: hand-checked names on machines with and without CUDA / MPS."""

from __future__ import annotations

import pytest
import torch

from ragsam.errors import InputError
from ragsam.utils import device as device_mod
from ragsam.utils.device import resolve_device


def _machine(monkeypatch: pytest.MonkeyPatch, gpus: int, mps: bool) -> None:
    """Pretend this machine has ``gpus`` CUDA devices and MPS (or not)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(device_mod, "mps_available", lambda: mps)


@pytest.mark.parametrize(("gpus", "mps", "name", "local_rank", "expected"), [
    (0, False, "auto", 0, "cpu"),
    (0, False, None, 0, "cpu"),
    (0, True, "auto", 0, "mps"),
    (2, True, "auto", 0, "cuda:0"),       # CUDA wins over MPS
    (2, False, "auto", 1, "cuda:1"),      # torchrun: this process's GPU
    (2, False, "cuda", 1, "cuda:1"),
    (2, False, "cuda", 0, "cuda:0"),
    (2, False, "cuda:1", 0, "cuda:1"),    # an explicit index is kept whatever the rank
    (2, False, "cpu", 1, "cpu"),
    (0, True, "mps", 0, "mps"),
    (0, False, torch.device("cpu"), 0, "cpu"),
])
def test_resolves(monkeypatch, gpus, mps, name, local_rank, expected) -> None:
    _machine(monkeypatch, gpus, mps)
    assert resolve_device(name, local_rank) == torch.device(expected)


@pytest.mark.parametrize(("gpus", "mps", "name", "message"), [
    (0, False, "cuda", "'cuda' requested but CUDA is not available"),
    (0, False, "cuda:0", "'cuda:0' requested but CUDA is not available"),
    (2, False, "cuda:2", "'cuda:2' requested but this machine has 2 CUDA device"),
    (0, False, "mps", "'mps' requested but Apple MPS is not available"),
    (0, False, "banana", "unknown device 'banana' \\(use auto, cpu, cuda, cuda:N or mps\\)"),
    (0, False, "gpu0", "unknown device 'gpu0'"),
    (0, False, "meta", "unknown device 'meta'"),
])
def test_refuses(monkeypatch, gpus, mps, name, message) -> None:
    _machine(monkeypatch, gpus, mps)
    with pytest.raises(InputError, match=message):
        resolve_device(name)
