"""Write safetensors files byte-for-byte reproducibly (atomic, permissions from the umask).

``safetensors.torch.save_file`` stores the ``__metadata__`` map in the header in
Rust ``HashMap`` order, which changes from process to process, so two identical
training runs wrote files that differed in bytes. :func:`save_safetensors`
serialises with ``safetensors.torch.save`` and rewrites the header with the
metadata keys sorted; tensors keep the library's own (deterministic) order and
offsets, so the file reads back identically with any safetensors reader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save

from ragsam.utils.atomic import write_bytes

_HEADER_LEN = 8  # little-endian u64 length of the JSON header, then the header, then the data


def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors serialisation of ``tensors`` with sorted metadata keys.

    Args:
        tensors: name -> contiguous CPU tensor.
        metadata: string -> string (stored under ``__metadata__``).
    Returns:
        The file content; the same inputs give the same bytes in every process.
    """
    raw = save(tensors, metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)
    n = int.from_bytes(raw[:_HEADER_LEN], "little")
    header = json.loads(raw[_HEADER_LEN:_HEADER_LEN + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    # Same keys and values in another order: never longer than the library's header, which is
    # padded with spaces to keep the data 8-byte aligned; pad ours to the same length.
    if len(text) > n:
        raise RuntimeError(f"re-serialised safetensors header grew from {n} to {len(text)} bytes")
    return raw[:_HEADER_LEN] + text + b" " * (n - len(text)) + raw[_HEADER_LEN + n:]


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None, force: bool = True) -> Path:
    """Write ``tensors`` to ``path`` atomically and reproducibly. Returns the path.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is false.
    """
    return write_bytes(path, canonical_safetensors(tensors, metadata), force=force)
