"""Hybrid fusion: a fine-tuned model's class probabilities + retrieval (SAM 2) organ probabilities.

For one slice, with ``p_ft`` the fine-tuned softmax ``(C, H, W)`` (channel ``c`` =
label id ``c``, 0 = background) and ``p_rag`` the SAM 2 sigmoid probabilities of the
organs present in the retrieved neighbours (the gate):

* retrieved organ ``c``: ``p[c] = (1 - w) * p_ft[c] + w * p_rag[c]``;
* background: ``p[0] = (1 - w) * p_ft[0] + w * (1 - max_c p_rag[c])`` (retrieval's
  probability that none of its organs is at the pixel);
* organs not in the neighbours (retrieval has no evidence either way) and retrieved
  organs the run does not know (id >= C) are left to the fine-tuned model.

The label is the argmax of ``p`` (the fused scores need not sum to one). ``w = 0``
gives the fine-tuned model's labels exactly. ``p_ft`` is handed in: the run that makes it
is loaded above this floor (:func:`ragsam.inference.rag_segment.run_probabilities`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from ragsam.errors import InputError


def fuse_slice(p_ft: Tensor, organ_ids: Sequence[int], p_rag: Tensor, weight: float) -> Tensor:
    """Fused scores ``(C, H, W)`` for one slice (see module docstring).

    Args:
        p_ft: ``(C, H, W)`` fine-tuned class probabilities.
        organ_ids: the ``K`` organ ids of ``p_rag`` (those in the retrieved neighbours).
        p_rag: ``(K, h, w)`` retrieval probabilities; resized bilinearly to ``(H, W)`` if needed.
        weight: ``w`` in [0, 1].
    """
    if not 0.0 <= weight <= 1.0:
        raise InputError(None, f"hybrid weight must be in [0, 1], got {weight!r}")
    fused = p_ft.clone()
    keep = [(i, int(o)) for i, o in enumerate(organ_ids) if 0 < int(o) < p_ft.shape[0]]
    if not keep:
        return fused
    rag = p_rag[[i for i, _ in keep]].to(p_ft.device, p_ft.dtype)
    if tuple(rag.shape[-2:]) != tuple(p_ft.shape[-2:]):
        rag = F.interpolate(rag[None], size=tuple(p_ft.shape[-2:]), mode="bilinear", align_corners=False)[0]
    channels = [o for _, o in keep]
    fused[channels] = (1.0 - weight) * p_ft[channels] + weight * rag
    fused[0] = (1.0 - weight) * p_ft[0] + weight * (1.0 - rag.max(dim=0).values)
    return fused
