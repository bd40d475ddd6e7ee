"""Strict checkpoint loading shared by every model family (SAM, promptable SAM, SAM 2, DINOv2, PEFT).

One rule: every missing, unexpected or mis-shaped key is an
:class:`~ragsam.errors.InputError` naming the checkpoint and the first keys,
unless a named pattern (``fnmatch`` style, e.g. ``"classifier.*"``) allows it.

- :func:`load_exactly` loads a state dict we hold into a module, either the
  whole module or only its trainable parameters (``trainable_only``: PEFT
  adapters, training checkpoints).
- :func:`check_loading_info` applies the same rule to what transformers'
  ``from_pretrained(..., output_loading_info=True)`` reports, for weights that
  transformers loads itself (Hugging Face folders and Hub ids).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

import torch

from ragsam.errors import InputError


def short_list(keys: list[str], shown: int = 4) -> str:
    """The first ``shown`` keys and how many more, for one-line messages."""
    return ", ".join(keys[:shown]) + (f" (+{len(keys) - shown} more)" if len(keys) > shown else "")


def _not_allowed(keys: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The sorted ``keys`` that no pattern in ``patterns`` matches."""
    patterns = tuple(patterns)
    return sorted(k for k in keys if not any(fnmatchcase(k, p) for p in patterns))


def refuse_mismatch(source: str, missing: list[str], unexpected: list[str], wrong: list[str],
                    weights_name: str = "model weights", what: str = "") -> None:
    """Raise the one-line :class:`InputError` for the first non-empty list (missing, unexpected, wrong shape)."""
    if missing:
        raise InputError(source, f"{len(missing)} {weights_name} missing from the checkpoint: {short_list(missing)}")
    if unexpected:
        raise InputError(source, f"{len(unexpected)} unexpected keys in the checkpoint: {short_list(unexpected)}")
    if wrong:
        where = f" for {what}" if what else ""
        raise InputError(source, f"{len(wrong)} weights have the wrong shape{where}: {short_list(wrong)}")


def load_exactly(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str = "",
                 weights_name: str = "model weights", *, trainable_only: bool = False,
                 allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ()) -> None:
    """Load ``state`` into ``module`` only if the keys and shapes match exactly.

    Args:
        module: the model (its dtypes are kept).
        state: a state dict in the module's own layout (after any conversion or resizing).
        source: the checkpoint, named first in messages.
        what: the architecture, named in the shape message (optional).
        weights_name: how missing tensors are called in the message (``SAM 2 weights``).
        trainable_only: compare with (and load into) only the parameters that require
            grad, e.g. a LoRA file or a training checkpoint; frozen weights are untouched.
        allow_missing: patterns of the module's keys the checkpoint may lack (left as they are).
        allow_unexpected: patterns of checkpoint keys that are ignored (e.g. ``classifier.*``).
    Raises:
        InputError: missing keys, unexpected keys or a shape mismatch (each listed).
    """
    if trainable_only:
        target = {n: p for n, p in module.named_parameters() if p.requires_grad}
    else:
        target = module.state_dict()
    missing = _not_allowed(set(target) - set(state), allow_missing)
    unexpected = _not_allowed(set(state) - set(target), allow_unexpected)
    common = sorted(set(target) & set(state))
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in common
             if tuple(state[k].shape) != tuple(target[k].shape)]
    refuse_mismatch(source, missing, unexpected, wrong, weights_name, what)
    with torch.no_grad():
        if trainable_only:
            for k in common:
                target[k].copy_(state[k].to(target[k].dtype))
        else:
            module.load_state_dict({k: state[k].to(target[k].dtype) for k in common},
                                   strict=not (set(target) - set(state)))


def check_loading_info(info: Mapping[str, list], source: str, weights_name: str = "model weights", *,
                       allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ()) -> None:
    """Apply :func:`load_exactly`'s rule to transformers' ``output_loading_info`` dict.

    Args:
        info: ``{"missing_keys": [...], "unexpected_keys": [...], "mismatched_keys": [...]}``.
        source: the folder or Hub id, named first in messages.
    Raises:
        InputError: as :func:`load_exactly`.
    """
    missing = _not_allowed(info.get("missing_keys", []), allow_missing)
    unexpected = _not_allowed(info.get("unexpected_keys", []), allow_unexpected)
    wrong = [str(m) for m in info.get("mismatched_keys", [])]
    refuse_mismatch(source, missing, unexpected, wrong, weights_name)
