"""Med-SA bottleneck adapters, attached to SAM blocks by forward hooks.

Two adapters per ViT block (Med-SA, paper section 3.2):

* after attention, before the residual:  h <- h + Up(GELU(Down(h)));
* parallel to the MLP, scaled by s:      x <- x + MLP(n) + s * Up(GELU(Down(n))),
  with n = LayerNorm2(x).

The bottleneck width is ``ratio * width``. By default ``Up`` is zero-initialised
(weight and bias), so at initialisation every adapter outputs exactly zero and the
model equals the base model; ``zero_up=False`` keeps ``nn.Linear``'s initialisation
for it, as Med-SA's released ``Adapter`` does (``MedicineToken/Medical-SAM-Adapter``,
``models/common/adapter.py``), so the adapted model starts off SAM. The adapters are registered as children of the
block (``attn_adapter`` / ``mlp_adapter``: ``...layers.3.attn_adapter.down.weight``)
and act through forward hooks on the block's ``attn`` and ``mlp`` modules, so
the base parameter names do not change.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class Adapter(nn.Module):
    """Down (C -> h), GELU, Up (h -> C; zero-initialised with ``zero_up``). Input and output (..., C)."""

    def __init__(self, width: int, ratio: float, zero_up: bool = True) -> None:
        super().__init__()
        hidden = max(1, int(round(width * ratio)))
        self.down = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, width)
        if zero_up:  # after nn.Linear's own init, so both choices draw the same random numbers
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.act(self.down(x)))


class AttentionAdapterHook:
    """Forward hook adding ``adapter(out)`` to an attention module's output (skip-connected adapter)."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + self.adapter(output[0]),) + tuple(output[1:])
        return output + self.adapter(output)


class ParallelAdapterHook:
    """Forward hook adding ``scale * adapter(input)`` to an MLP's output (MLP-parallel adapter)."""

    def __init__(self, adapter: Adapter, scale: float) -> None:
        self.adapter, self.scale = adapter, float(scale)

    def __call__(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        return output + self.scale * self.adapter(inputs[0])


def add_block_adapters(block: nn.Module, attn: nn.Module, mlp: nn.Module, width: int,
                       ratio: float, scale: float, zero_up: bool = True) -> list[nn.Module]:
    """Attach the two Med-SA adapters to ``block`` around its ``attn`` and ``mlp``.

    Returns:
        The two new adapters (registered on ``block`` as ``attn_adapter`` and ``mlp_adapter``).
    """
    block.attn_adapter = Adapter(width, ratio, zero_up)
    block.mlp_adapter = Adapter(width, ratio, zero_up)
    attn.register_forward_hook(AttentionAdapterHook(block.attn_adapter))
    mlp.register_forward_hook(ParallelAdapterHook(block.mlp_adapter, scale))
    return [block.attn_adapter, block.mlp_adapter]
