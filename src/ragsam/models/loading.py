"""Strict loading of pretrained SAM weights into a :class:`MultiOrganSam`.

Every checkpoint key must land in the model and every model parameter must
come from the checkpoint, with one explicit exception: the mask decoder of a
K-organ model has K + 1 mask tokens where SAM has 4. The rule is

* token / hypernetwork MLP / IoU-head output row ``i`` for ``i < min(4, K + 1)``
  is copied from pretrained token ``i`` (token 0, SAM's single-mask token,
  becomes the background token);
* tokens ``i >= 4`` keep their fresh initialisation and are listed in the
  load report as ``new``; pretrained tokens ``i >= K + 1`` are listed as
  ``dropped``.

Position embeddings are resized to the model's input size
(:mod:`ragsam.models.resize`). Anything else that does not fit is an
:class:`~ragsam.errors.InputError` naming the checkpoint and the keys.
"""

from __future__ import annotations

import re

from torch import Tensor

from ragsam.errors import InputError
from ragsam.models.load_report import LoadReport
from ragsam.models.registry import ARCHITECTURES
from ragsam.models.resize import resize_position_tensors
from ragsam.models.sam import MultiOrganSam
from ragsam.models.weights import checkpoint_arch, read_state_dict
from ragsam.utils.state_dict import load_exactly

_HYPER = re.compile(r"^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.")
_TOKEN_ROWS = ("mask_decoder.mask_tokens.weight", "mask_decoder.iou_prediction_head.proj_out.weight",
               "mask_decoder.iou_prediction_head.proj_out.bias")


def _adapt_mask_tokens(state: dict[str, Tensor], target: dict[str, Tensor], report: LoadReport) -> None:
    """Fit the checkpoint's mask tokens to the model's K + 1 (see module docstring). In place;
    records the new, dropped and reused tokens in ``report``."""
    if "mask_decoder.mask_tokens.weight" not in state:  # reported as a missing key by the caller
        return
    pretrained = int(state["mask_decoder.mask_tokens.weight"].shape[0])
    wanted = int(target["mask_decoder.mask_tokens.weight"].shape[0])
    shared = min(pretrained, wanted)
    for key in _TOKEN_ROWS:
        if key in state and state[key].shape[0] != wanted:
            merged = target[key].detach().clone()
            merged[:shared] = state[key][:shared]
            state[key] = merged
    new, dropped = [], []
    for i in range(shared, wanted):
        new.append(f"mask token {i} (mask_decoder.mask_tokens.weight[{i}], "
                   f"mask_decoder.output_hypernetworks_mlps.{i}, iou_prediction_head.proj_out row {i})")
        for key, value in target.items():
            if key.startswith(f"mask_decoder.output_hypernetworks_mlps.{i}."):
                state[key] = value.detach().clone()
    for key in [k for k in state if (m := _HYPER.match(k)) and int(m.group(1)) >= wanted]:
        dropped.append(key)
        del state[key]
    report.new, report.dropped, report.reused_tokens = new, dropped, [f"0..{shared - 1}"]


def check_arch(state: dict[str, Tensor], arch: str, source: str) -> None:
    """Refuse a checkpoint whose ViT does not have ``arch``'s width and depth (says what it looks like)."""
    name, width, depth = checkpoint_arch(state)
    expected = ARCHITECTURES.get(arch)
    if expected is not None and (expected.width, expected.depth) != (width, depth):
        looks = name or f"an unregistered SAM (width {width}, depth {depth})"
        raise InputError(source, f"checkpoint does not fit architecture {arch!r}: it looks like {looks}")


def load_pretrained(model: MultiOrganSam, weights: str, state: dict[str, Tensor] | None = None) -> LoadReport:
    """Load ``weights`` (see :func:`ragsam.models.weights.read_state_dict`) into ``model``.

    Args:
        model: the freshly built model (its initialisation is kept for new tokens).
        weights: the source (named in messages).
        state: its transformers-layout state dict, if already read (consumed).
    Returns:
        The :class:`LoadReport`: ``resized`` keys, ``new`` and ``dropped`` decoder entries,
        ``reused_tokens``.
    Raises:
        InputError: another architecture, missing / unexpected keys, shape mismatch.
    """
    if state is None:
        state = read_state_dict(weights)
    check_arch(state, model.arch, weights)
    target = model.state_dict()
    shapes = {k: v.shape for k, v in target.items()}
    report = LoadReport(source=weights, arch=model.arch, image_size=model.image_size)
    report.resized = resize_position_tensors(state, shapes)
    _adapt_mask_tokens(state, target, report)
    load_exactly(model, state, weights, repr(model.arch))
    return report
