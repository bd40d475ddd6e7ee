"""SAM 2's retrieval path as a trainable module, and loading a trained one (``--sam2-run``).

:class:`RagEpisodeModel` runs exactly what ``ragsam segment`` runs per slice
(:class:`~ragsam.retrieval.sam2_memory.Sam2MemorySegmenter`: image encoder ->
memory encoder on each support's organ masks -> memory attention -> prompt-free
decoder, one object per organ) with autograd on, and turns the per-organ logits
into ``K + 1`` class logits: channel 0 (background) is 0, channel ``o`` is organ
``o``'s logit, or ``ABSENT_LOGIT`` for organs on no support (never predicted, as at
inference). ``argmax`` of these class logits is exactly the segmenter's merged
label map (background unless some organ logit is > 0, else the largest), so the
Dice + CE loss on their softmax trains what inference reads. With ``object_scores=True``
it also returns SAM 2's object-score logit of every offered organ (:class:`EpisodeOutput`):
SAM 2 replaces the mask of an organ whose score is < 0 by a constant -1024, so only a loss
on the score itself can switch that organ back on.

SAM 2 stays in eval mode while training: transformers' SAM 2 changes behaviour in
train mode (object pointers of conditioning frames, memory binarisation, dropout in
memory attention), and the episodes must be the inference computation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ragsam.config import load_config
from ragsam.errors import InputError
from ragsam.training.rag_config import RagTrainConfig

ABSENT_LOGIT = -20.0  # < 0 (background): never the argmax; bounded CE where no support shows the organ
RUN_FORMAT = "ragsam-rag-run"


def class_logits(organ_logits: Tensor, organ_ids: list[int], num_classes: int) -> Tensor:
    """``(n, S, S)`` logits of organs ``organ_ids`` -> ``(K + 1, S, S)`` class logits (see module docstring)."""
    size = organ_logits.shape[-2:]
    absent = organ_logits.new_full(tuple(size), ABSENT_LOGIT)
    by_id = dict(zip(organ_ids, organ_logits, strict=True))
    return torch.stack([organ_logits.new_zeros(tuple(size))] + [by_id.get(o, absent) for o in range(1, num_classes + 1)])


class EpisodeOutput(NamedTuple):
    """What :meth:`RagEpisodeModel.forward` returns with ``object_scores=True`` (a tuple, for DDP).

    ``logits``: float32 ``(B, K + 1, S, S)`` class logits; ``object_scores``: float32 ``(B, K)``,
    SAM 2's object-score logit of organ ``o`` in column ``o - 1`` (0 where not offered);
    ``offered``: bool ``(B, K)``, the organs some support shows (the ones SAM 2 predicted).
    """

    logits: Tensor
    object_scores: Tensor
    offered: Tensor


def organ_scores(scores: Tensor, organ_ids: list[int], num_classes: int) -> tuple[Tensor, Tensor]:
    """``(n,)`` object scores of organs ``organ_ids`` -> ``(K,)`` scores (0 where absent) and ``(K,)`` offered mask."""
    zero = scores.new_zeros(())
    by_id = dict(zip(organ_ids, scores, strict=True))
    offered = torch.tensor([o in by_id for o in range(1, num_classes + 1)], device=scores.device)
    return torch.stack([by_id.get(o, zero) for o in range(1, num_classes + 1)]), offered


class RagEpisodeModel(nn.Module):
    """A SAM 2 (with its PEFT) that maps episodes to class logits.

    Args:
        sam2: a ``Sam2VideoModel`` on its device (LoRA already applied).
        num_classes: K organs.
        pointer_positions, use_empty_supports: as :class:`Sam2MemorySegmenter`.
    """

    def __init__(self, sam2: nn.Module, num_classes: int, pointer_positions: str = "sequential",
                 use_empty_supports: bool = True) -> None:
        from ragsam.retrieval.sam2_memory import Sam2MemorySegmenter

        super().__init__()
        self.sam2 = sam2
        self.num_classes = int(num_classes)
        self.segmenter = Sam2MemorySegmenter(sam2, pointer_positions, use_empty_supports)  # type: ignore[arg-type]

    def train(self, mode: bool = True) -> RagEpisodeModel:
        """Set the wrapper's flag only: SAM 2 itself always runs in eval mode (module docstring)."""
        super().train(mode)
        self.sam2.eval()
        return self

    def forward(self, images: Tensor, labels: Tensor, object_scores: bool = False) -> Tensor | EpisodeOutput:
        """Episodes -> class logits.

        Args:
            images: float ``(B, 1 + k, S, S)`` in [0, 1]: query, then supports in frame order.
            labels: int ``(B, 1 + k, S, S)`` (row 0, the query's, is not read).
            object_scores: also return SAM 2's object scores (:class:`EpisodeOutput`).
        Returns:
            float32 ``(B, K + 1, S, S)``, or an :class:`EpisodeOutput` with ``object_scores``.
        """
        seg = self.segmenter
        seg.differentiable = torch.is_grad_enabled()
        try:
            b, n, s = images.shape[0], images.shape[1], images.shape[-1]
            frames = seg.encode_images(images.reshape(b * n, s, s))  # one image-encoder pass for all
            out, scores, offered = [], [], []
            for i in range(b):
                supports = [seg.encode_support(frames[i * n + j], labels[i, j]) for j in range(1, n)]
                pred = seg.segment(frames[i * n], supports, output_size=(s, s))
                out.append(class_logits(pred.logits, pred.organ_ids, self.num_classes))
                score, shown = organ_scores(pred.object_scores, pred.organ_ids, self.num_classes)
                scores.append(score)
                offered.append(shown)
            if not object_scores:
                return torch.stack(out)
            return EpisodeOutput(torch.stack(out), torch.stack(scores), torch.stack(offered))
        finally:
            seg.differentiable = False


def build_rag_model(cfg: RagTrainConfig, device: str | torch.device = "cpu") -> RagEpisodeModel:
    """SAM 2 of ``cfg.model.weights`` with ``cfg.model.peft`` applied, wrapped for episodes, on ``device``."""
    from ragsam.models.sam2 import build_sam2
    from ragsam.peft.sam2 import apply_sam2_peft

    if cfg.model.num_classes is None:
        raise InputError(None, "model.num_classes is not resolved (build the episodes first)")
    sam2, _ = build_sam2(cfg.model.weights, device=device)
    apply_sam2_peft(sam2, cfg.model.peft)
    sam2.to(device)
    return RagEpisodeModel(sam2, cfg.model.num_classes, cfg.model.pointer_positions, cfg.model.use_empty_supports)


def read_rag_run_config(run_dir: str | os.PathLike) -> RagTrainConfig:
    """The resolved :class:`RagTrainConfig` of a ``ragsam train-rag`` run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "SAM 2 run folder does not exist")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise InputError(run_dir, "not a ragsam train-rag run folder (no config.yaml)")
    try:
        return load_config(RagTrainConfig, path)
    except InputError as exc:
        raise InputError(path, f"not a train-rag configuration ({exc.problem}); "
                               "a `ragsam train` run goes to --run, not --sam2-run") from None


def load_sam2_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu",
                  weights: str = "model.safetensors", merge: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The fine-tuned SAM 2 of a ``ragsam train-rag`` run, in eval mode on ``device``.

    Args:
        merge: fold LoRA into the base weights (same outputs, faster).
    Returns:
        ``(Sam2VideoModel, info)`` as :func:`ragsam.models.sam2.build_sam2`, with ``info["run"]``
        (the folder) and ``info["run_weights"]`` (the weights' sha256), which key the support cache.
    Raises:
        InputError: not a train-rag run, unfinished run, tensors that do not fit.
    """
    from ragsam.models.sam2 import build_sam2
    from ragsam.peft.apply import load_trainable
    from ragsam.peft.lora import merge_lora
    from ragsam.peft.sam2 import apply_sam2_peft
    from ragsam.retrieval.bank_build import file_sha256

    cfg = read_rag_run_config(run_dir)
    path = Path(run_dir) / weights
    if not path.is_file():
        raise InputError(path, "missing: the run has not finished (continue it with `ragsam train-rag --resume`)")
    model, info = build_sam2(cfg.model.weights, device=device)
    apply_sam2_peft(model, cfg.model.peft)
    meta = load_trainable(model, path)
    if meta.get("format") != RUN_FORMAT:
        raise InputError(path, f"not a train-rag weights file (format {meta.get('format')!r})")
    if merge:
        merge_lora(model)
    model.requires_grad_(False)
    model.eval()
    info = {**info, "run": str(Path(run_dir)), "run_weights": file_sha256(path),
            "pointer_positions": cfg.model.pointer_positions, "use_empty_supports": cfg.model.use_empty_supports}
    return model, info
