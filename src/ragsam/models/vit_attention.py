"""A faster, exact SAM ViT block: padding-free window projections and fused rel-pos attention.

``transformers``' SAM ViT block (as Meta's original) pads the token grid to a
multiple of the window (32 x 32 -> 42 x 42 tokens at 512 px, window 14) *before*
the ``qkv`` and ``proj`` projections, and adds the decomposed relative-position
bias as a dense ``(B, heads, N, N)`` tensor. That tensor forces PyTorch's
unfused "math" attention whenever gradients flow (training), and on the GPU it
costs ``B * heads * N^2`` bf16 values per block held for the backward pass.

:class:`FusedSamVisionLayer` / :class:`FusedSamVisionAttention` compute the
same function, with the same parameters and names, differently:

* **Projections on real tokens only.** A padded token is zero after the layer
  norm, so its projection is ``qkv(0)`` (the bias, plus LoRA's zero update):
  ``qkv`` runs on the ``H x W`` real tokens and the padding is filled with
  ``qkv(0)``; ``proj`` runs after the window un-partition and crop. At 512 px
  this removes 42 % of the qkv / proj work of the windowed blocks.
* **Relative position folded into the dot product.** SAM's bias is
  ``bias[i, j] = q_i . Rh[y_i - y_j] + q_i . Rw[x_i - x_j]`` (after the table
  lookup). With ``rel_h[i, :] = q_i . Rh[y_i, :]`` (Hk values) and ``rel_w``
  likewise, and one-hot rows ``e_h(y_j)``, ``e_w(x_j)``,

      scale * q_i . k_j + bias[i, j] = [scale q_i, rel_h[i], rel_w[i]] . [k_j, e_h(y_j), e_w(x_j)]

  so one maskless ``scaled_dot_product_attention`` with ``scale=1`` computes
  the biased attention. Head dimensions are zero-padded to a multiple of 8 (the
  value too: fused kernels want equal widths), which changes no dot product.
  Without a mask, PyTorch picks its flash / memory-efficient kernels, also in
  training, and never materialises an ``N x N`` tensor. (Exception: training
  on the CPU, where PyTorch's flash *backward* is slower than the explicit
  form; there the scores are materialised as in the stock block.)

Outputs equal the stock blocks' up to float32 rounding (checked in the tests,
with LoRA and Med-SA adapters attached). Adapter forward hooks on ``attn`` see
the attention output at the same place as before (after ``proj``).

:func:`set_vit_attention` switches a model between this implementation
(``"fused"``, ragsam's default) and the stock ``"eager"`` / ``"sdpa"`` ones
(the benchmarks' reference mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.sam import modeling_sam

VIT_ATTENTION_IMPLS = ("fused", "sdpa", "eager")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _rel_table(attn: modeling_sam.SamVisionAttention, q_size: int, k_size: int, table: Tensor) -> Tensor:
    """Relative-position vectors ``(q_size, k_size, d)`` for offsets ``q - k``.

    Same values as ``SamVisionAttention.get_rel_pos``; when the table already has
    ``2 * size - 1`` rows (always, for square grids ragsam builds) the identity
    interpolation is skipped.
    """
    if q_size != k_size or table.shape[0] != 2 * q_size - 1:
        return attn.get_rel_pos(q_size, k_size, table)
    coords = torch.arange(q_size, device=table.device)
    return table[coords[:, None] - coords[None, :] + (q_size - 1)]


def _one_hot_rows(height: int, width: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row / column indicators of the ``height * width`` tokens: ``(N, height)`` and ``(N, width)``."""
    eye_h = torch.eye(height, dtype=dtype, device=device)
    eye_w = torch.eye(width, dtype=dtype, device=device)
    return eye_h.repeat_interleave(width, dim=0), eye_w.repeat(height, 1)


def fused_rel_pos_attention(query: Tensor, key: Tensor, value: Tensor, rel_h_table: Tensor | None,
                            rel_w_table: Tensor | None, scale: float, grid: tuple[int, int],
                            explicit: bool | None = None) -> Tensor:
    """Softmax attention with SAM's decomposed relative-position bias, as one maskless SDPA call.

    Args:
        query, key, value: ``(B, heads, N, d)`` with ``N = grid[0] * grid[1]`` tokens in row-major order.
        rel_h_table / rel_w_table: ``(Hq, Hk, d)`` / ``(Wq, Wk, d)`` relative-position vectors
            (from :func:`_rel_table`), or None for attention without relative positions.
        scale: the softmax scale applied to ``q . k`` (``d ** -0.5``).
        grid: token grid ``(H, W)``.
        explicit: materialise the scores (:func:`_explicit_attention`) instead of the
            folded SDPA call; default: only when training on the CPU.
    Returns:
        ``(B, heads, N, d)`` attention output.
    """
    batch, heads, tokens, dim = query.shape
    if rel_h_table is None or rel_w_table is None:
        return F.scaled_dot_product_attention(query, key, value, scale=scale)
    height, width = grid
    q_grid = query.reshape(batch, heads, height, width, dim)
    rel_h = torch.einsum("bnyxc,ykc->bnyxk", q_grid, rel_h_table.to(query.dtype))
    rel_w = torch.einsum("bnyxc,xkc->bnyxk", q_grid, rel_w_table.to(query.dtype))
    if explicit is None:
        explicit = query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad
    if explicit:
        return _explicit_attention(query, key, value, rel_h, rel_w, scale)
    extra = rel_h.shape[-1] + rel_w.shape[-1]
    width_out = _round_up(dim + extra, 8)
    pad = width_out - dim - extra
    e_h, e_w = _one_hot_rows(height, width, query.dtype, query.device)
    q_ext = torch.cat([query * scale, rel_h.reshape(batch, heads, tokens, -1),
                       rel_w.reshape(batch, heads, tokens, -1)], dim=-1)
    k_ext = torch.cat([key, e_h.expand(batch, heads, -1, -1), e_w.expand(batch, heads, -1, -1)], dim=-1)
    if pad:
        q_ext, k_ext = F.pad(q_ext, (0, pad)), F.pad(k_ext, (0, pad))
    out = F.scaled_dot_product_attention(q_ext, k_ext, F.pad(value, (0, width_out - dim)), scale=1.0)
    return out[..., :dim]


def _explicit_attention(query: Tensor, key: Tensor, value: Tensor, rel_h: Tensor, rel_w: Tensor,
                        scale: float) -> Tensor:
    """``softmax(scale q k^T + bias) v`` with the bias added in place, for CPU training.

    PyTorch's CPU flash-attention *backward* is slower than the explicit form at
    SAM's sizes (measured: 1.5x for 196-token windows), so with gradients on the
    CPU the scores are materialised, as in the stock block, with the two bias
    terms broadcast onto them. ``rel_h`` / ``rel_w``: ``(B, heads, H, W, H)`` / ``(..., W)``.
    """
    batch, heads, height, width, _ = rel_h.shape
    tokens = height * width
    scores = ((query * scale) @ key.transpose(-1, -2)).view(batch, heads, height, width, height, width)
    scores = scores + rel_h[..., :, None] + rel_w[..., None, :]
    return torch.softmax(scores.view(batch, heads, tokens, tokens), dim=-1) @ value


class FusedSamVisionAttention(modeling_sam.SamVisionSdpaAttention):
    """SAM ViT attention taking the *un-partitioned* grid; same parameters as the stock class.

    ``forward(hidden_states (B, H, W, C), window_size)`` -> ``((B, H, W, C), None)``:
    ``qkv`` on the real tokens, window partition of q / k / v (padding filled with
    ``qkv(0)``), :func:`fused_rel_pos_attention`, un-partition, crop, ``proj``.
    """

    def forward(self, hidden_states: Tensor, window_size: int = 0,
                output_attentions: bool = False) -> tuple[Tensor, None]:
        batch, height, width, channels = hidden_states.shape
        heads = self.num_attention_heads
        qkv = self.qkv(hidden_states)  # (B, H, W, 3C)
        if window_size > 0:
            grid_h, grid_w = _round_up(height, window_size), _round_up(width, window_size)
            if (grid_h, grid_w) != (height, width):
                # A padded token is exactly zero after the layer norm, so its projection is qkv(0).
                filler = self.qkv(hidden_states.new_zeros(1, channels)).to(qkv.dtype)
                padded = filler.view(1, 1, 1, -1).expand(batch, grid_h, grid_w, -1).clone()
                padded[:, :height, :width] = qkv
                qkv = padded
            side = window_size
            nh, nw = grid_h // side, grid_w // side
            # (B, nh, s, nw, s, 3, heads, d) -> (3, B * nh * nw, heads, s * s, d)
            qkv = qkv.reshape(batch, nh, side, nw, side, 3, heads, -1).permute(5, 0, 1, 3, 6, 2, 4, 7)
            qkv = qkv.reshape(3, batch * nh * nw, heads, side * side, -1)
            attn_grid = (side, side)
        else:
            qkv = qkv.reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
            attn_grid = (height, width)
        query, key, value = qkv.unbind(0)
        rel_h = rel_w = None
        if self.use_rel_pos:
            rel_h = _rel_table(self, attn_grid[0], attn_grid[0], self.rel_pos_h)
            rel_w = _rel_table(self, attn_grid[1], attn_grid[1], self.rel_pos_w)
        out = fused_rel_pos_attention(query, key, value, rel_h, rel_w, self.scale, attn_grid)
        if window_size > 0:
            # (B * nh * nw, heads, s * s, d) -> (B, nh * s, nw * s, C), cropped to (B, H, W, C)
            out = out.reshape(batch, nh, nw, heads, side, side, -1).permute(0, 1, 4, 2, 5, 3, 6)
            out = out.reshape(batch, grid_h, grid_w, channels)[:, :height, :width]
        else:
            out = out.permute(0, 2, 1, 3).reshape(batch, height, width, channels)
        return self.proj(out), None


class FusedSamVisionLayer(modeling_sam.SamVisionLayer):
    """SAM ViT block whose attention partitions windows itself (see :class:`FusedSamVisionAttention`)."""

    def forward(self, hidden_states: Tensor) -> Tensor:
        attn_out, _ = self.attn(self.layer_norm1(hidden_states), window_size=self.window_size)
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


_STOCK_ATTENTION = {"eager": modeling_sam.SamVisionAttention, "sdpa": modeling_sam.SamVisionSdpaAttention}


def set_vit_attention(module: nn.Module, impl: str = "fused") -> int:
    """Switch every SAM ViT block below ``module`` to ``impl`` in place; returns the number of blocks.

    Args:
        module: a model holding ``transformers`` SAM vision layers (any depth).
        impl: ``"fused"`` (this module), ``"sdpa"`` or ``"eager"`` (the stock
            ``transformers`` classes). Parameters, names and hooks are untouched:
            only the classes change.
    """
    if impl not in VIT_ATTENTION_IMPLS:
        raise ValueError(f"ViT attention must be one of {VIT_ATTENTION_IMPLS}, got {impl!r}")
    count = 0
    for layer in module.modules():
        if not isinstance(layer, modeling_sam.SamVisionLayer):
            continue
        if impl == "fused":
            layer.__class__ = FusedSamVisionLayer
            layer.attn.__class__ = FusedSamVisionAttention
        else:
            layer.__class__ = modeling_sam.SamVisionLayer
            layer.attn.__class__ = _STOCK_ATTENTION[impl]
        count += 1
    return count


def vit_attention_impl(module: nn.Module) -> str | None:
    """``"fused"``, ``"sdpa"`` or ``"eager"`` for the first SAM ViT block below ``module`` (None if none)."""
    for layer in module.modules():
        if isinstance(layer, modeling_sam.SamVisionLayer):
            if isinstance(layer.attn, FusedSamVisionAttention):
                return "fused"
            return "sdpa" if isinstance(layer.attn, modeling_sam.SamVisionSdpaAttention) else "eager"
    return None
