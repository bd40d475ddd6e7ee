"""The retrieval step shared by ``ragsam segment`` and episodic training (``ragsam train-rag``).

Training and inference must condition SAM 2 on the same supports, in the same
order, so both call these two functions:

* :func:`retrieve_supports`: embed a volume's slices with the bank's embedder and
  query the bank (relative-z prior, excluded cases), returning each slice's ``k``
  neighbours in *frame order*: the best neighbour last, i.e. nearest the query frame;
* :func:`support_memories`: the encoded :class:`~ragsam.retrieval.sam2_memory.SupportMemory`
  of neighbours, reusing a cache keyed by ``(case_id, z)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import torch


class MemoryCache(Protocol):
    """What :func:`support_memories` needs of a cache (``SupportCache`` in ``segment.py``)."""

    def get(self, key: tuple[str, int]) -> Any | None: ...

    def put(self, key: tuple[str, int], value: Any) -> None: ...


def relative_z(depth: int) -> np.ndarray:
    """``(depth,)`` relative z positions ``z / (depth - 1)`` in [0, 1] (0 for a single slice)."""
    return np.arange(depth, dtype=np.float64) / max(depth - 1, 1)


def retrieve_supports(bank: Any, embedder: Any, slices: np.ndarray, k: int, exclude_cases: Iterable[str] = (),
                      z_prior: float | None = None, batch_size: int = 8) -> list[list[Any]]:
    """The ``k`` supports of every slice of one volume, in frame order (best neighbour last).

    Args:
        bank: a loaded :class:`~ragsam.retrieval.bank.SupportBank`.
        embedder: the bank's embedder (``bank.embedder()``).
        slices: float32 ``(Z, S, S)`` in [0, 1], the whole volume in canonical order
            (the relative-z prior uses ``z / (Z - 1)``).
        k: supports per slice.
        exclude_cases: case ids never used as supports (the query's own case in training).
        z_prior: weight of the relative-z penalty (``None`` / 0: off).
    Returns:
        ``Z`` lists of ``k`` :class:`~ragsam.retrieval.bank.Neighbour`.
    """
    vectors = embedder.embed(slices, batch_size=batch_size)
    hits = bank.query(vectors, k, embedder.identity, exclude_cases=sorted(set(exclude_cases)),
                      z_prior=z_prior or None, query_rel_z=relative_z(len(slices)) if z_prior else None)
    return [list(h[::-1]) for h in hits]


def support_memories(seg: Any, bank: Any, cache: MemoryCache | None, neighbours: Sequence[Any]) -> list[Any]:
    """Encoded supports for ``neighbours`` (in order), encoding the uncached ones in one batch.

    ``cache=None`` encodes every neighbour afresh (training: the weights change every step).
    """
    keys = [(nb.case_id, nb.z) for nb in neighbours]
    found = {key: None if cache is None else cache.get(key) for key in dict.fromkeys(keys)}
    missing = list({(nb.case_id, nb.z): nb for nb in neighbours if found[(nb.case_id, nb.z)] is None}.values())
    if missing:
        images, labels = bank.support_slices(missing)
        frames = seg.encode_images(torch.from_numpy(images))
        for nb, frame, lab in zip(missing, frames, labels, strict=True):
            memory = seg.encode_support(frame, lab, key=(nb.case_id, nb.z))
            if cache is not None:
                cache.put((nb.case_id, nb.z), memory)
            found[(nb.case_id, nb.z)] = memory
    return [found[key] for key in keys]
