"""The one rule that turns a device name into a :class:`torch.device`.

Every command and API that takes ``--device`` / ``device=`` goes through
:func:`resolve_device`, so ``auto`` means the same everywhere:

- ``auto`` (or ``None``): ``cuda:<local_rank>`` when CUDA is available, else
  Apple ``mps`` when available, else ``cpu``;
- ``cpu``;
- ``cuda``: ``cuda:<local_rank>`` (the GPU of this torchrun process; ``cuda:0``
  without torchrun);
- ``cuda:N``: that GPU, refused when there are not ``N + 1`` GPUs;
- ``mps``: refused when MPS is not available.

Anything else (``gpu``, ``tpu``, ``cuda:x``) is refused with an :class:`InputError`
that lists the accepted names.
"""

from __future__ import annotations

import torch

from ragsam.errors import InputError

DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


def mps_available() -> bool:
    """Apple's Metal backend is built into this torch and usable on this machine."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """The :class:`torch.device` for ``device`` (see the module docstring for the rule).

    Args:
        device: ``auto``/``None``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a torch device.
        local_rank: this process's GPU under torchrun (``LOCAL_RANK``); used by ``auto`` and ``cuda``.
    Raises:
        InputError: an unknown name, or a device this machine does not have.
    """
    name = "auto" if device is None else str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local_rank}")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(None, f"unknown device {name!r} (use {DEVICE_NAMES})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(None, f"device {name!r} requested but CUDA is not available here (use --device cpu)")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        if dev.index >= torch.cuda.device_count():
            raise InputError(None, f"device {name!r} requested but this machine has "
                                   f"{torch.cuda.device_count()} CUDA device(s)")
        return dev
    if dev.type == "mps":
        if not mps_available():
            raise InputError(None, f"device {name!r} requested but Apple MPS is not available here (use --device cpu)")
        return dev
    if dev.type != "cpu":
        raise InputError(None, f"unknown device {name!r} (use {DEVICE_NAMES})")
    return dev
