"""Validation of ``ragsam train-rag``: 3D Dice per organ of retrieval segmentation on whole held-out cases.

Each validation slice is segmented as ``ragsam segment`` would (inference mode, its
retrieved supports in frame order, support memories encoded once per validation
and shared between slices), and the counts go through the same
:func:`~ragsam.training.validate.dice_counts` / :func:`~ragsam.training.validate.scores_from_counts`
as ``ragsam train``'s validation, sharded over ranks and all-reduced.
"""

from __future__ import annotations

import numpy as np
import torch

from ragsam.training.distributed import DistInfo, all_reduce_sum
from ragsam.training.rag_data import EpisodeData
from ragsam.training.rag_model import RagEpisodeModel
from ragsam.training.validate import ValResult, dice_counts, scores_from_counts


def predict_case(model: RagEpisodeModel, data: EpisodeData, indices: list[int], cache_size: int = 4096
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged label maps and ground truth of episodes ``indices``: two int64 ``(N, S, S)`` CPU tensors."""
    from ragsam.retrieval.bank import Neighbour
    from ragsam.retrieval.segment import SupportCache
    from ragsam.retrieval.support_retrieval import support_memories

    seg, bank = model.segmenter, data.bank
    cache = SupportCache(cache_size)
    preds, gts = [], []
    for index in indices:
        ep = data.dataset.episodes[index]
        item = data.dataset[index]
        query = item["image"][0]
        neighbours = [Neighbour(cid, z, 0.0, 0.0, (), row, 0.0)
                      for (cid, z), row in zip(ep.supports, ep.support_rows, strict=True)]
        supports = support_memories(seg, bank, cache, neighbours)
        pred = seg.segment(seg.encode_images(query[None])[0], supports, output_size=tuple(query.shape[-2:]))
        preds.append(pred.labels.cpu())
        gts.append(item["label"][0])
    return torch.stack(preds), torch.stack(gts)


def validate_rag(model: RagEpisodeModel, data: EpisodeData, info: DistInfo) -> ValResult:
    """3D Dice of the retrieval segmenter on ``data.val_cases``, cases sharded over ranks."""
    case_ids = sorted(data.val_cases)
    counts = torch.zeros(len(case_ids), data.num_classes, 3, dtype=torch.float64)
    for ci, case in enumerate(case_ids):
        if ci % info.world == info.rank:
            pred, gt = predict_case(model, data, data.val_cases[case])
            counts[ci] = dice_counts(pred, gt, data.num_classes)
    counts = all_reduce_sum(counts, info)
    return scores_from_counts(case_ids, counts)


def mean_dice_per_organ(result: ValResult) -> dict[int, float]:
    """``{organ: Dice}`` averaged over cases (organs present in some case's ground truth)."""
    return {k: float(np.round(v, 6)) for k, v in result.per_organ.items()}
