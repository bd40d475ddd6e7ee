"""Load a finished training run: ``load_run(run_dir) -> (model, TrainConfig)``.

The run folder (see :mod:`ragsam.training.run`) holds ``config.yaml`` (whose
``model:`` section rebuilds the architecture and its base weights) and
``model.safetensors`` (only the trainable tensors). With ``weights: random``
the frozen base weights are re-created from the run's seed exactly as in
training, so a LoRA run on a random base reloads to the same network.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ragsam.errors import InputError
from ragsam.training.checkpoint import rng_state, set_rng_state
from ragsam.training.config import TrainConfig
from ragsam.training.run_info import RunInfo
from ragsam.utils.device import resolve_device
from ragsam.utils.seeding import seed_everything

WEIGHT_FILES = ("model.safetensors", "last.safetensors")


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The resolved :class:`TrainConfig` saved in ``<run_dir>/config.yaml``."""
    return RunInfo.read_config(run_dir)


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "model.safetensors",
             merge: bool = False) -> tuple[nn.Module, TrainConfig]:
    """Rebuild a run's model with its trained tensors, in eval mode on ``device``.

    Args:
        run_dir: a folder written by ``ragsam train``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a torch device.
        weights: ``model.safetensors`` (best / final) or ``last.safetensors``.
        merge: fold LoRA updates into the base weights (faster inference, same outputs).
    Returns:
        ``(model, cfg)``; ``model(images (B, 3, S, S) in [0, 1]) -> logits (B, K+1, S, S)``
        with ``S = cfg.model.image_size``.
    Raises:
        InputError: not a run folder, unfinished run, or weights that do not fit.
    """
    from ragsam.models import build_model, load_trainable, merge_peft

    if weights not in WEIGHT_FILES:
        raise InputError(run_dir, f"weights must be one of {', '.join(WEIGHT_FILES)}, got {weights!r}")
    cfg = read_run_config(run_dir)
    path = Path(run_dir) / weights
    if not path.is_file():
        raise InputError(path, "missing: the run has not finished (continue it with `ragsam train --resume`)")
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    saved = rng_state()
    try:
        seed_everything(cfg.seed)  # same frozen random base as in training (weights: random)
        model = build_model(cfg.model)
    finally:
        set_rng_state(saved)  # leave the caller's generators untouched
    load_trainable(model, path)
    if merge:
        merge_peft(model)
    model.to(dev).eval()
    return model, cfg
