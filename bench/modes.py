"""Switches between the reference mode and the optimised path, shared by the benchmarks.

The reference mode runs the way the released SAMed / Med-SA code does: fp32,
eager (explicit ``softmax(QK^T)V``) attention, batch 1 at inference, unmerged
LoRA, no caching and a host synchronisation (``loss.item()``) every step. The
optimised path uses what ragsam ships: PyTorch's fused scaled-dot-product
attention (the transformers default), bf16 autocast on CUDA, merged LoRA,
batched slices, cached embeddings / memories and no per-step host sync.

These helpers only flip switches on models built by ragsam's own builders;
they do not change any library code.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

BENCH_DIR = Path(__file__).resolve().parent
ATTENTION_IMPLS = ("eager", "sdpa", "fused")


def set_attention(model: nn.Module, impl: str) -> int:
    """Make every attention layer of ``model`` use ``impl`` (``"eager"``, ``"sdpa"`` or ``"fused"``).

    Covers both ways attention is dispatched: SAM ViT blocks get their classes
    switched by :func:`ragsam.models.vit_attention.set_vit_attention` (``fused`` is
    ragsam's default: padding-free window projections and the relative-position
    bias folded into SDPA; ``eager`` / ``sdpa`` are the stock transformers
    blocks), every other model (SAM decoder, DINOv2, SAM 2) looks up
    ``config._attn_implementation`` on each call (``fused`` means ``sdpa`` there).

    Returns:
        The number of modules switched (0 means the model has no attention to switch).
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {impl!r}")
    from ragsam.models.vit_attention import set_vit_attention

    count = set_vit_attention(model, impl)
    configs: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            configs[id(config)] = config
    for config in configs.values():
        config._attn_implementation = "sdpa" if impl == "fused" else impl
        count += 1
    return count


LOGIT_SCALE = 1e4


@torch.no_grad()
def trained_like_logits(model: nn.Module, scale: float = LOGIT_SCALE) -> nn.Module:
    """Scale a random multi-organ SAM's mask hypernetwork outputs so that its logits are O(1).

    A randomly initialised decoder's class logits lie ~1e-4 apart: every softmax is ~1/(K+1),
    the Dice + CE loss is the same constant whatever the encoder computes, and rounding
    flips near-tied labels. A trained model's logits are O(1) apart; scaling
    ``proj_out`` (trainable, saved with a run) gives the benchmarks that regime, so that
    their same-loss / same-label checks test something. Timing is unaffected. Returns ``model``.
    """
    for mlp in model.mask_decoder.output_hypernetworks_mlps:
        mlp.proj_out.weight.mul_(scale)
        mlp.proj_out.bias.mul_(scale)
    return model


def autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``bf16`` is true, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX): ragsam's own rule."""
    from ragsam.utils.precision import cpu_has_native_bf16

    return cpu_has_native_bf16()


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (the machine is shared: every figure records them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def run_isolated(script: str, args: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run ``bench/<script> <args>`` in a fresh Python process and return the JSON it prints last.

    CPU max RSS cannot be reset inside a process, so each mode whose peak memory
    is reported runs in its own interpreter.
    """
    cmd = [sys.executable, str(BENCH_DIR / script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    start = proc.stdout.rfind("\n{")
    return json.loads(proc.stdout[start + 1 if start >= 0 else 0:])


def speedup(reference: float, optimised: float) -> float | None:
    """``optimised / reference`` for rates (higher is better), rounded; None when undefined."""
    if not reference:
        return None
    return round(optimised / reference, 2)
