"""The one strict loader: whole modules, trainable-only, allowed patterns, transformers' loading info."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ragsam.errors import InputError
from ragsam.utils.state_dict import check_loading_info, load_exactly, short_list


class _Two(nn.Module):
    """A frozen ``base`` (2 -> 3) and a trainable ``head`` (3 -> 1) with a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(2, 3)
        self.head = nn.Linear(3, 1)
        self.register_buffer("scale", torch.ones(1))
        self.base.requires_grad_(False)


def _state(module: nn.Module, value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value) for k, v in module.state_dict().items()}


def test_short_list() -> None:
    assert short_list(["a", "b"]) == "a, b"
    assert short_list(list("abcdef")) == "a, b, c, d (+2 more)"


def test_loads_every_key_and_keeps_dtype() -> None:
    model = _Two().double()
    load_exactly(model, {k: v.float() for k, v in _state(model, 2.0).items()}, "ck.pt")
    assert all(torch.equal(v, torch.full_like(v, 2.0)) for v in model.state_dict().values())
    assert model.head.weight.dtype == torch.float64


def test_missing_unexpected_and_shapes_are_named() -> None:
    model = _Two()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = _state(model, 1.0)
    with pytest.raises(InputError, match=r"^ck.pt: 1 model weights missing from the checkpoint: scale$"):
        load_exactly(model, {k: v for k, v in state.items() if k != "scale"}, "ck.pt")
    with pytest.raises(InputError, match=r"^ck.pt: 1 unexpected keys in the checkpoint: extra$"):
        load_exactly(model, {**state, "extra": torch.zeros(1)}, "ck.pt")
    with pytest.raises(InputError, match=r"^ck.pt: 1 weights have the wrong shape for tiny: "
                                         r"head.bias \(2,\) vs model \(1,\)$"):
        load_exactly(model, {**state, "head.bias": torch.zeros(2)}, "ck.pt", "tiny")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # refusals load nothing


def test_allowed_patterns() -> None:
    model = _Two()
    before = model.scale.clone()
    state = {k: v for k, v in _state(model, 3.0).items() if k != "scale"}
    load_exactly(model, {**state, "classifier.weight": torch.zeros(4)}, "ck.pt",
                 allow_missing=("sc*",), allow_unexpected=("classifier.*",))
    assert torch.equal(model.scale, before)  # allowed missing: left as it was
    assert torch.equal(model.head.weight, torch.full((1, 3), 3.0))
    with pytest.raises(InputError, match="1 unexpected keys in the checkpoint: classifier.weight"):
        load_exactly(model, {**state, "classifier.weight": torch.zeros(4)}, "ck.pt", allow_missing=("scale",))


def test_trainable_only_touches_only_trainable_parameters() -> None:
    model = _Two()
    base_before = model.base.weight.clone()
    head = {"head.weight": torch.full((1, 3), 7.0), "head.bias": torch.full((1,), 8.0)}
    load_exactly(model, head, "lora.safetensors", trainable_only=True)
    assert torch.equal(model.head.weight, torch.full((1, 3), 7.0))
    assert model.head.bias.item() == 8.0
    assert torch.equal(model.base.weight, base_before)
    with pytest.raises(InputError, match=r"lora.safetensors: 1 trainable tensors missing from the checkpoint: "
                                         r"head.bias"):
        load_exactly(model, {"head.weight": head["head.weight"]}, "lora.safetensors",
                     weights_name="trainable tensors", trainable_only=True)
    with pytest.raises(InputError, match="1 unexpected keys in the checkpoint: base.weight"):  # frozen: not ours
        load_exactly(model, {**head, "base.weight": torch.zeros(3, 2)}, "lora.safetensors", trainable_only=True)


def test_check_loading_info() -> None:
    check_loading_info({"missing_keys": ["a.position_ids"], "unexpected_keys": [], "mismatched_keys": []},
                       "hub/id", allow_missing=("*position_ids",))
    with pytest.raises(InputError, match=r"^hub/id: 2 SAM 2 weights missing from the checkpoint: a, b$"):
        check_loading_info({"missing_keys": ["b", "a"]}, "hub/id", "SAM 2 weights")
    with pytest.raises(InputError, match=r"^hub/id: 1 unexpected keys in the checkpoint: extra.weight$"):
        check_loading_info({"unexpected_keys": ["extra.weight", "classifier.bias"]}, "hub/id",
                           allow_unexpected=("classifier.*",))
    with pytest.raises(InputError, match=r"^hub/id: 1 weights have the wrong shape: \('k', \(1,\), \(2,\)\)$"):
        check_loading_info({"mismatched_keys": [("k", (1,), (2,))]}, "hub/id")
