"""Where bfloat16 autocast runs: one rule for training, validation and inference.

bf16 autocast is used on CUDA devices that compute in bf16 (Ampere and later),
and on a CPU only when asked (``cpu=True``) *and* the CPU has native bf16 dot
products (AVX512-BF16 or AMX). On such a CPU it made the ViT-B training step
1.6x faster but slowed the tiny test model (0.82x: its matrices are too small
for the casts to pay), hence opt-in; see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when ``/proc/cpuinfo`` lists ``avx512_bf16`` or ``amx_bf16`` (False where it cannot be read)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def uses_bf16(device: torch.device | str, bf16: bool = True, cpu: bool = False) -> bool:
    """Whether :func:`autocast` enables bf16 for this device.

    Args:
        device: where the model runs.
        bf16: the run's bf16 switch (``optim.bf16``); False forces fp32 everywhere.
        cpu: also on CPU (``optim.bf16_cpu``), if the CPU computes bf16 natively.
    """
    device = torch.device(device)
    if not bf16:
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu and cpu_has_native_bf16()
    return False


def autocast(device: torch.device | str, bf16: bool = True, cpu: bool = False) -> contextlib.AbstractContextManager:
    """``torch.autocast(<device type>, bfloat16)`` when :func:`uses_bf16`, else a no-op context."""
    device = torch.device(device)
    if uses_bf16(device, bf16, cpu):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_bf16_note(device: torch.device | str, bf16: bool = True, cpu: bool = False) -> str | None:
    """A one-line note when CPU bf16 was asked for but will not run (None when nothing to say)."""
    device = torch.device(device)
    if not (cpu and bf16) or device.type != "cpu" or cpu_has_native_bf16():
        return None
    return "CPU bf16 was requested but this CPU has no native bf16 (AVX512-BF16 or AMX): running in fp32"
