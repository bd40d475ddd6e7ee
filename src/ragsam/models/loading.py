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

With ``head_init="fresh"`` (SAMed's ``load_from``, which skips every checkpoint
key containing ``mask_tokens``, ``output_hypernetworks_mlps`` or
``iou_prediction_head``) none of those come from the checkpoint: the model's
mask tokens, hypernetwork MLPs and IoU head are re-initialised with PyTorch's
default rule (``nn.Embedding``: N(0, 1); ``nn.Linear``: Kaiming-uniform weights
and uniform biases, each module's ``reset_parameters``), as SAM's own modules
start, and reported as ``new``. The IoU token is SAM's either way.

Position embeddings are resized to the model's input size
(:mod:`ragsam.models.resize`). Anything else that does not fit is an
:class:`~ragsam.errors.InputError` naming the checkpoint and the keys.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from ragsam.errors import InputError
from ragsam.models.config import HEAD_INITS
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


_FRESH_PREFIXES = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                   "mask_decoder.iou_prediction_head.")


def _fresh_heads(model: MultiOrganSam, state: dict[str, Tensor], report: LoadReport) -> None:
    """SAMed's start: mask tokens, hypernetworks and IoU head from PyTorch's default init. In place;
    records the new and dropped entries in ``report``."""
    dec = model.mask_decoder
    for module in [dec.mask_tokens, *dec.output_hypernetworks_mlps.modules(), *dec.iou_prediction_head.modules()]:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.reset_parameters()
    target = model.state_dict()
    dropped = [k for k in state if k.startswith(_FRESH_PREFIXES)]
    for key in dropped:
        del state[key]
    for key, value in target.items():
        if key.startswith(_FRESH_PREFIXES):
            state[key] = value.detach().clone()
    report.new = [f"all {dec.num_mask_tokens} mask tokens, hypernetwork MLPs and the IoU head "
                  "(PyTorch default init, SAMed)"]
    report.dropped, report.reused_tokens = dropped, []


def check_arch(state: dict[str, Tensor], arch: str, source: str) -> None:
    """Refuse a checkpoint whose ViT does not have ``arch``'s width and depth (says what it looks like)."""
    name, width, depth = checkpoint_arch(state)
    expected = ARCHITECTURES.get(arch)
    if expected is not None and (expected.width, expected.depth) != (width, depth):
        looks = name or f"an unregistered SAM (width {width}, depth {depth})"
        raise InputError(source, f"checkpoint does not fit architecture {arch!r}: it looks like {looks}")


def load_pretrained(model: MultiOrganSam, weights: str, state: dict[str, Tensor] | None = None,
                    head_init: str = "pretrained") -> LoadReport:
    """Load ``weights`` (see :func:`ragsam.models.weights.read_state_dict`) into ``model``.

    Args:
        model: the freshly built model (its initialisation is kept for new tokens).
        weights: the source (named in messages).
        state: its transformers-layout state dict, if already read (consumed).
        head_init: ``"pretrained"`` (reuse SAM's tokens 0-3) or ``"fresh"`` (SAMed; see
            the module docstring).
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
    if head_init == "fresh":
        _fresh_heads(model, state, report)
    elif head_init == "pretrained":
        _adapt_mask_tokens(state, target, report)
    else:
        raise InputError(None, f"model.head_init {head_init!r} is not one of {', '.join(HEAD_INITS)}")
    load_exactly(model, state, weights, repr(model.arch))
    return report
