"""Strict checkpoint loading shared by every model family (SAM, promptable SAM, SAM 2)."""

from __future__ import annotations

import torch

from ragsam.errors import InputError


def short_list(keys: list[str], shown: int = 4) -> str:
    """The first ``shown`` keys and how many more, for one-line messages."""
    return ", ".join(keys[:shown]) + (f" (+{len(keys) - shown} more)" if len(keys) > shown else "")


def load_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, what: str = "",
                 weights_name: str = "model weights") -> None:
    """Load ``state`` into ``module`` only if the keys and shapes match exactly.

    Args:
        module: the model (its dtypes are kept).
        state: a state dict in the module's own layout (after any conversion or resizing).
        source: the checkpoint, named first in messages.
        what: the architecture, named in the shape message (optional).
        weights_name: how missing tensors are called in the message (``SAM 2 weights``).
    Raises:
        InputError: missing keys, unexpected keys or a shape mismatch (each listed).
    """
    target = module.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing:
        raise InputError(source, f"{len(missing)} {weights_name} missing from the checkpoint: {short_list(missing)}")
    if unexpected:
        raise InputError(source, f"{len(unexpected)} unexpected keys in the checkpoint: {short_list(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in sorted(target)
             if tuple(state[k].shape) != tuple(target[k].shape)]
    if wrong:
        where = f" for {what}" if what else ""
        raise InputError(source, f"{len(wrong)} weights have the wrong shape{where}: {short_list(wrong)}")
    with torch.no_grad():
        module.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
