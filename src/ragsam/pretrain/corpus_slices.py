"""All slices of a prepared corpus in memory, with the per-slice targets the pre-training stages use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_ORGANS = 13  # BTCV label ids 1..13


@dataclass
class CorpusSlices:
    """Every slice of a prepared cache (numpy + torch only at use).

    Attributes:
        images: float32 ``(N, S, S)`` in [0, 1]. labels: uint8 ``(N, S, S)`` BTCV ids.
        case_ids: ``(N,)`` str. z: ``(N,)`` slice index in its case. rel_z: ``(N,)`` in [0, 1]
            (0 = most inferior, as ``prepare``'s manifest and the support bank).
        areas: float32 ``(N, 13)`` fraction of the slice covered by organ ``1..13``.
    """

    images: np.ndarray
    labels: np.ndarray
    case_ids: np.ndarray
    z: np.ndarray
    rel_z: np.ndarray
    areas: np.ndarray

    @property
    def presence(self) -> np.ndarray:
        """Bool ``(N, 13)``: organ ``j + 1`` is on the slice."""
        return self.areas > 0


def load_corpus_slices(prepared: Path) -> CorpusSlices:
    """Read every labelled case of ``prepared`` (``ragsam prepare`` output) into memory."""
    from ragsam.data.slice_dataset import read_manifest

    records = read_manifest(prepared)
    images, labels, cases, zs, rel = [], [], [], [], []
    for case_id in dict.fromkeys(r.case_id for r in records):
        image = np.load(prepared / "cases" / case_id / "image.npy").astype(np.float32)
        label = np.load(prepared / "cases" / case_id / "label.npy")
        depth = image.shape[0]
        images.append(image)
        labels.append(label)
        cases += [case_id] * depth
        zs += list(range(depth))
        rel += [z / (depth - 1) if depth > 1 else 0.0 for z in range(depth)]
    label_all = np.concatenate(labels)
    pixels = float(label_all.shape[1] * label_all.shape[2])
    counts = np.stack([np.bincount(s.ravel(), minlength=NUM_ORGANS + 1)[1:NUM_ORGANS + 1] for s in label_all])
    return CorpusSlices(np.concatenate(images), label_all, np.asarray(cases), np.asarray(zs),
                        np.asarray(rel, dtype=np.float32), (counts / pixels).astype(np.float32))


def neighbour_quality(vectors: np.ndarray, corpus: CorpusSlices) -> dict[str, float]:
    """How anatomically close each slice's nearest neighbour from ANOTHER case is (cosine on ``vectors``).

    Returns:
        ``mean_abs_dz``: mean |rel_z difference| (0 = same height; random pairs ~0.33);
        ``organ_jaccard``: mean Jaccard of the two slices' organ sets (1 = same organs).
    """
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    sims = v @ v.T
    sims[corpus.case_ids[:, None] == corpus.case_ids[None, :]] = -np.inf
    best = sims.argmax(axis=1)
    pres = corpus.presence
    inter = (pres & pres[best]).sum(1)
    union = (pres | pres[best]).sum(1)
    jaccard = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {"mean_abs_dz": round(float(np.abs(corpus.rel_z - corpus.rel_z[best]).mean()), 4),
            "organ_jaccard": round(float(jaccard.mean()), 4)}
