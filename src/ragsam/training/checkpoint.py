"""Resumable training state: ``checkpoints/state.pt``, written atomically.

The file holds only tensors, ints, floats, strings, bools, lists and dicts, so
it loads with ``torch.load(..., weights_only=True)``; a file that needs
arbitrary unpickling is refused. Contents:

* ``iteration`` - optimiser steps completed; ``done`` - the run finished;
* ``model`` - the trainable tensors (``requires_grad`` parameters, by name);
* ``optimizer`` - ``AdamW.state_dict()``; ``schedule`` - its constants;
* ``stream`` - data-order position (epoch, next batch, world size);
* ``rng`` - Python, NumPy, torch CPU and CUDA generator states;
* ``best`` - best validation score, its iteration, validations since it;
* ``history`` - validation results so far.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ragsam.errors import InputError
from ragsam.utils.atomic import atomic_path
from ragsam.utils.state_dict import load_exactly

FORMAT = "ragsam-train-state"
VERSION = 1
STATE_FILE = Path("checkpoints") / "state.pt"


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the parameters that require grad, by name."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Copy ``tensors`` into the model's trainable parameters; the key sets must match exactly."""
    load_exactly(model, tensors, str(source), weights_name="trainable tensors", trainable_only=True)


def rng_state() -> dict[str, Any]:
    """All global generator states as checkpoint-safe values."""
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(state, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached": float(np_cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: Path, *, iteration: int, model: nn.Module, optimizer: torch.optim.Optimizer,
               schedule: dict, stream: dict, best: dict, history: list, done: bool) -> Path:
    """Write the resumable state atomically (temporary file + rename)."""
    payload = {
        "format": FORMAT, "version": VERSION, "iteration": int(iteration), "done": bool(done),
        "model": trainable_tensors(model), "optimizer": optimizer.state_dict(), "schedule": dict(schedule),
        "stream": dict(stream), "rng": rng_state(), "best": dict(best), "history": list(history),
    }
    with atomic_path(path, force=True) as tmp, tmp.open("wb") as fh:
        # Through a file object the zip's inner folder is "archive", not the temporary file's
        # random name, so identical states give identical bytes.
        torch.save(payload, fh)
    return path


def load_state(path: Path) -> dict[str, Any]:
    """Read ``state.pt`` safely.

    Raises:
        InputError: missing, corrupt, not ours, or needing unsafe unpickling.
    """
    if not path.is_file():
        raise InputError(path, "no checkpoint to resume from (was the run started with checkpoints?)")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; anything else is torn or foreign
        raise InputError(path, "not a readable checkpoint (not a torch zip archive; truncated or foreign file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln]
        why = lines[0] if lines else type(exc).__name__
        raise InputError(path, f"refusing to unpickle: the checkpoint contains objects other than "
                         f"tensors and plain values ({why[:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(path, "not a ragsam training checkpoint (no 'format: ragsam-train-state')")
    if state.get("version") != VERSION:
        raise InputError(path, f"checkpoint version {state.get('version')!r} is not supported (expected {VERSION})")
    return state
