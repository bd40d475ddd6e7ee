"""Validation during training: 3D Dice per organ on whole held-out cases.

A validation case is the stack of its validation slices (all of its slices, or
the held-out ones with ``data.holdout``), predicted slice by slice at the
training size in the canonical orientation of the prepared cache. Per case and
organ we count ``|P & G|``, ``|P|``, ``|G|`` over the whole stack (3D Dice, not
a mean of 2D Dice); organs absent from the case's ground truth are left out of
its mean; the score is the mean over cases of the per-case organ means.
Counts are summed over ranks, so a sharded validation gives the same number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ragsam.training.distributed import DistInfo, all_reduce_sum
from ragsam.utils.precision import autocast


@dataclass
class ValResult:
    """One validation.

    Attributes:
        mean_dice: mean over cases of the mean organ Dice (nan if nothing to score).
        per_case: ``{case_id: {organ_id: dice}}`` (organs present in the ground truth).
        per_organ: ``{organ_id: mean over cases}``.
    """

    mean_dice: float
    per_case: dict[str, dict[int, float]]
    per_organ: dict[int, float]

    def to_json(self) -> dict:
        """JSON-ready dict (organ ids as strings)."""
        return {"mean_dice": None if math.isnan(self.mean_dice) else self.mean_dice,
                "per_case": {c: {str(k): v for k, v in d.items()} for c, d in self.per_case.items()},
                "per_organ": {str(k): v for k, v in self.per_organ.items()}}


def dice_counts(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts for Dice of organs ``1..K``.

    Args:
        pred, gt: int (N, H, W) label maps. num_classes: K (organs, without background).
    Returns:
        float64 (K, 3): ``|P & G|``, ``|P|``, ``|G|`` per organ.
    """
    out = torch.zeros(num_classes, 3, dtype=torch.float64)
    for k in range(1, num_classes + 1):
        p, g = pred == k, gt == k
        out[k - 1, 0] = (p & g).sum()
        out[k - 1, 1] = p.sum()
        out[k - 1, 2] = g.sum()
    return out


def scores_from_counts(case_ids: list[str], counts: torch.Tensor) -> ValResult:
    """Dice per case and organ from (n_cases, K, 3) counts."""
    per_case: dict[str, dict[int, float]] = {}
    for ci, case in enumerate(case_ids):
        d: dict[int, float] = {}
        for k in range(counts.shape[1]):
            inter, p, g = counts[ci, k].tolist()
            if g > 0:
                d[k + 1] = 2.0 * inter / (p + g)
        per_case[case] = d
    case_means = [float(np.mean(list(d.values()))) for d in per_case.values() if d]
    organs = sorted({k for d in per_case.values() for k in d})
    per_organ = {k: float(np.mean([d[k] for d in per_case.values() if k in d])) for k in organs}
    return ValResult(float(np.mean(case_means)) if case_means else float("nan"), per_case, per_organ)


@torch.no_grad()
def predict_indices(model: nn.Module, dataset: Dataset, indices: list[int], batch_size: int,
                    device: torch.device, bf16: bool, bf16_cpu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax predictions and labels for ``dataset[indices]``: two int64 (N, S, S) tensors (CPU).

    ``bf16`` / ``bf16_cpu``: autocast as :func:`ragsam.utils.precision.autocast` decides.
    """
    loader = DataLoader(dataset, batch_sampler=[indices[i:i + batch_size] for i in range(0, len(indices), batch_size)],
                        pin_memory=device.type == "cuda")
    preds, labels = [], []
    for item in loader:
        with autocast(device, bf16, cpu=bf16_cpu):
            logits = model(item["image"].float().to(device, non_blocking=True))
        preds.append(logits.float().argmax(1).cpu())
        labels.append(item["label"].long())
    return torch.cat(preds), torch.cat(labels)


def validate(model: nn.Module, dataset: Dataset, cases: dict[str, list[int]], num_classes: int,
             batch_size: int, info: DistInfo, bf16: bool = True, bf16_cpu: bool = False) -> ValResult:
    """3D Dice of ``model`` on ``cases`` (``{case_id: dataset indices}``), sharded over ranks.

    The model is put in eval mode for the duration and restored afterwards;
    ``bf16`` / ``bf16_cpu`` as in :func:`predict_indices`.
    """
    was_training = model.training
    model.eval()
    case_ids = sorted(cases)
    counts = torch.zeros(len(case_ids), num_classes, 3, dtype=torch.float64)
    for ci, case in enumerate(case_ids):
        if ci % info.world != info.rank:
            continue
        pred, gt = predict_indices(model, dataset, cases[case], batch_size, info.device, bf16, bf16_cpu)
        counts[ci] = dice_counts(pred, gt, num_classes)
    counts = all_reduce_sum(counts, info)
    model.train(was_training)
    return scores_from_counts(case_ids, counts)
