"""Reproducible safetensors files: same tensors and metadata -> same bytes, permissions from the umask."""

from __future__ import annotations

import os
import stat

import torch
from safetensors.torch import load_file, safe_open

from ragsam.utils.safetensors_io import canonical_safetensors, save_safetensors

TENSORS = {"b.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a.bias": torch.tensor([1.5, -2.0])}
META = {f"key{i}": f"value {i}" for i in (7, 3, 9, 1, 5, 0, 8, 2)}


def test_same_input_same_bytes_and_sorted_metadata():
    blobs = {canonical_safetensors(TENSORS, META) for _ in range(12)}
    assert len(blobs) == 1  # safetensors' own save() gives a new metadata order almost every call
    blob = blobs.pop()
    n = int.from_bytes(blob[:8], "little")
    assert n % 8 == 0
    header = blob[8:8 + n].decode()
    positions = [header.index(f'"{k}"') for k in sorted(META)]
    assert positions == sorted(positions)


def test_round_trip_with_safetensors_reader(tmp_path):
    path = save_safetensors(TENSORS, tmp_path / "w.safetensors", META)
    loaded = load_file(path)
    assert loaded.keys() == TENSORS.keys() and all(torch.equal(loaded[k], TENSORS[k]) for k in TENSORS)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == META


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = save_safetensors(TENSORS, tmp_path / "w.safetensors", META)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 & ~0o027; save_file made 0o600
