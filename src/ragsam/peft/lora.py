"""LoRA for (possibly fused) linear layers, keeping the base layer's parameter names.

:class:`LoRALinear` replaces an ``nn.Linear`` and owns its ``weight`` and
``bias`` under the same names (as torchtune does), so a base checkpoint loads
into a LoRA model unchanged. The low-rank bypass adds, to output rows
``[start, end)`` of each target slice,

    y[..., start:end] += scale * (x @ A^T) @ B^T,   A: (r, in), B: (end - start, r)

with A kaiming-uniform (as in LoRA / SAMed) and B zero, so at initialisation
the layer is exactly the base layer. For SAM's fused ``qkv`` projection
(out = 3C) the slices are q = [0, C), k = [C, 2C), v = [2C, 3C), matching the
``reshape(B, N, 3, heads, C / heads)`` split in the attention. Parameters are
``lora_a.<slice>`` and ``lora_b.<slice>`` (``<slice>`` = ``q``, ``k``, ``v`` or
``w`` for a whole, unfused layer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """A frozen linear layer plus low-rank updates on chosen output slices.

    Args:
        base: the ``nn.Linear`` to wrap (its tensors are reused, not copied).
        rank: r. scale: multiplier of the update (alpha / r, SAMed: 1.0).
        slices: name -> (start, end) rows of the output that get a bypass.
    """

    def __init__(self, base: nn.Linear, rank: int, scale: float, slices: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.scale = rank, float(scale)
        self.slices = dict(slices)
        self.lora_a = nn.ParameterDict()
        self.lora_b = nn.ParameterDict()
        for name, (start, end) in self.slices.items():
            a = torch.empty(rank, self.in_features, device=base.weight.device, dtype=base.weight.dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_a[name] = nn.Parameter(a)
            self.lora_b[name] = nn.Parameter(torch.zeros(end - start, rank, device=a.device, dtype=a.dtype))

    def delta_weight(self, name: str) -> Tensor:
        """The update scale * B @ A of slice ``name``, shape (end - start, in)."""
        return self.scale * (self.lora_b[name] @ self.lora_a[name])

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out)."""
        out = F.linear(x, self.weight, self.bias)
        for name, (start, end) in self.slices.items():
            update = F.linear(F.linear(x, self.lora_a[name]), self.lora_b[name]) * self.scale
            out = out + F.pad(update, (start, self.out_features - end))
        return out

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the updates folded into ``weight`` (same outputs)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            weight = self.weight.detach().clone()
            for name, (start, end) in self.slices.items():
                weight[start:end] += self.delta_weight(name)
            lin.weight.copy_(weight)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        lin.weight.requires_grad_(self.weight.requires_grad)
        if self.bias is not None:
            lin.bias.requires_grad_(self.bias.requires_grad)
        return lin

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale}, " \
               f"slices={list(self.slices)}"


def lora_scale(alpha: float | None, rank: int) -> float:
    """The multiplier of a rank-``rank`` update: ``alpha / rank``, or 1.0 without ``alpha`` (SAMed's plain ``B A``)."""
    return 1.0 if alpha is None else float(alpha) / rank


def wrap_linear(parent: nn.Module, attr: str, rank: int, scale: float,
                slices: dict[str, tuple[int, int]] | None = None) -> LoRALinear:
    """Replace ``parent.<attr>`` (an ``nn.Linear``) by a :class:`LoRALinear`; whole layer if no slices."""
    base = getattr(parent, attr)
    if not isinstance(base, nn.Linear):
        raise TypeError(f"{attr} is a {type(base).__name__}, not nn.Linear")
    lora = LoRALinear(base, rank, scale, slices or {"w": (0, base.out_features)})
    setattr(parent, attr, lora)
    return lora


def merge_lora(module: nn.Module) -> int:
    """Replace every :class:`LoRALinear` below ``module`` by its merged ``nn.Linear``; returns the count."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, LoRALinear):
            setattr(module, name, child.merged())
            count += 1
        else:
            count += merge_lora(child)
    return count
