"""Prompted segmentation of CT slices with the original SAM head (SAM, MedSAM).

For every slice and every organ present in the ground truth on that slice, a
prompt is simulated (:mod:`ragsam.baselines.prompts`) and fed to a plain
``transformers.SamModel`` (3 multimask tokens + 1 single-mask token):

* **image**: slice in [0, 1] (HU window applied by the slicer) -> 3 channels ->
  bilinear (antialiased) resize to the model's ``image_size`` (1024 for the
  published weights) -> normalised. ``"sam"`` normalisation is SAM's own:
  ``x * 255`` then ``(x - pixel_mean) / pixel_std``. ``"unit"`` feeds [0, 1]
  directly, which is what MedSAM was trained on (its training code calls the
  image encoder on [0, 1] images, and its Hugging Face port ships
  ``do_normalize: false``). ``resolve_normalization`` picks it (see there).
* **prompts** are mapped to the model input frame exactly: a continuous slice
  position ``p`` (pixel-edge units) is ``p * image_size / S`` there, and the
  transformers prompt encoder adds 0.5 to every coordinate ("pixel centre"),
  so we pass ``p * image_size / S - 0.5``.
* **one image embedding per slice, one decoder call per slice**: the prompts of
  all organs of a slice form the decoder's prompt batch.
* **which mask**: following the SAM paper, a single point is ambiguous, so for
  ``point1`` SAM returns its 3 multimask outputs and we keep the one with the
  highest predicted IoU; for ``point3`` and ``box`` the prompt is unambiguous
  and the single-mask output (``multimask_output=False``) is used. MedSAM was
  trained with box prompts only (single-mask output); its point rows use the
  same rules with weights that never saw points.
* **masks**: low-resolution logits are upsampled bilinearly to ``image_size``
  and then to the slice size ``S`` (SAM's ``postprocess_masks``), thresholded at
  0 (probability 0.5). Where organs overlap the highest logit wins.

Prompts exist only where the ground truth has the organ, so a prediction for
an organ can never appear on a slice without that organ in the ground truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import SamModel

from ragsam.baselines.prompts import Prompt, check_box_iou, check_prompt_kind, make_prompt, prompt_rng
from ragsam.errors import InputError

PIXEL_MEAN = (123.675, 116.28, 103.53)
"""SAM's pixel mean on the 0-255 scale (RGB)."""
PIXEL_STD = (58.395, 57.12, 57.375)
"""SAM's pixel standard deviation on the 0-255 scale (RGB)."""
NORMALIZATIONS = ("sam", "unit")
PAD_LABEL = -1
"""Point label of SAM's "not a point" embedding, pads organs with fewer points (tiny organs)."""


@dataclass(frozen=True)
class PromptSettings:
    """How prompts are simulated.

    Attributes:
        kind: ``point1``, ``point3`` or ``box``.
        box_iou: IoU of the box prompt with the organ's tight box (``box`` only), in (0, 1].
        seed: base seed (>= 0); prompts depend on (seed, case id, slice, organ) only.
    """

    kind: str = "box"
    box_iou: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        check_prompt_kind(self.kind)
        check_box_iou(self.box_iou)
        if self.seed < 0:
            raise InputError(None, f"seed must be >= 0, got {self.seed}")


def resolve_normalization(weights: str, choice: str = "auto") -> str:
    """The pixel normalisation for ``weights``: ``"sam"`` or ``"unit"``.

    ``choice`` other than ``"auto"`` is returned as is. With ``"auto"``:

    1. weights whose name contains ``medsam`` (HF id, folder or ``.pth``) -> ``"unit"``: MedSAM
       was trained on [0, 1] images whatever a port's preprocessor file says (the
       ``wanglab/medsam-vit-base`` port ships SAM's ImageNet statistics, the
       ``flaviagiammarino/medsam-vit-base`` port ``do_normalize: false``);
    2. a local Hugging Face folder with ``preprocessor_config.json``: ``do_normalize: false``
       or a zero ``image_mean`` -> ``"unit"``, else ``"sam"``;
    3. anything else (SAM ids and files, ``random``) -> ``"sam"``.
    """
    if choice != "auto":
        if choice not in NORMALIZATIONS:
            raise InputError(None, f"unknown normalisation {choice!r} (choose from auto, {', '.join(NORMALIZATIONS)})")
        return choice
    if "medsam" in str(weights).lower():
        return "unit"
    config = Path(weights) / "preprocessor_config.json"
    if config.is_file():
        try:
            pre = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(config, f"not readable JSON ({exc})") from None
        mean = pre.get("image_mean", [0.485])
        if not pre.get("do_normalize", True) or all(float(m) == 0.0 for m in mean):
            return "unit"
    return "sam"


def sam_pixel_values(images: Tensor, image_size: int, normalization: str = "sam") -> Tensor:
    """Slices in [0, 1] -> the model's pixel values.

    Args:
        images: float ``(B, S, S)`` in [0, 1].
        image_size: model input side (px).
        normalization: ``"sam"`` or ``"unit"`` (module docstring).
    Returns:
        float32 ``(B, 3, image_size, image_size)``.
    """
    x = images.float()[:, None]
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    x = x.clamp(0.0, 1.0).expand(-1, 3, -1, -1)
    if normalization == "unit":
        return x.contiguous()
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    return (x * 255.0 - mean) / std


def to_model_coords(xy: np.ndarray, slice_size: int, image_size: int) -> np.ndarray:
    """Continuous slice positions (pixel-edge units) -> transformers SAM prompt coordinates."""
    return np.asarray(xy, dtype=np.float64) * (image_size / slice_size) - 0.5


def prompt_inputs(prompts: list[Prompt], slice_size: int, image_size: int, device: torch.device) -> dict:
    """Batch the prompts of one slice as ``SamModel`` keyword arguments.

    Returns:
        boxes: ``{"input_boxes": (1, K, 4)}``; points: ``{"input_points": (1, K, N, 2),
        "input_labels": (1, K, N)}`` with :data:`PAD_LABEL` padding for organs with fewer points.
    """
    if prompts[0].kind == "box":
        boxes = np.stack([to_model_coords(p.box.reshape(2, 2), slice_size, image_size).ravel() for p in prompts])
        return {"input_boxes": torch.tensor(boxes[None], dtype=torch.float32, device=device)}
    n = max(len(p.points) for p in prompts)
    coords = np.zeros((len(prompts), n, 2))
    labels = np.full((len(prompts), n), PAD_LABEL, dtype=np.int64)
    for i, p in enumerate(prompts):
        coords[i, : len(p.points)] = to_model_coords(p.points + 0.5, slice_size, image_size)  # pixel centres
        labels[i, : len(p.points)] = 1
    return {"input_points": torch.tensor(coords[None], dtype=torch.float32, device=device),
            "input_labels": torch.tensor(labels[None], device=device)}


def slice_prompts(labels: np.ndarray, organ_ids: list[int], settings: PromptSettings, case_id: str,
                  z: int) -> dict[int, Prompt]:
    """Prompts for the organs present on one ground-truth slice.

    Args:
        labels: integer ``(S, S)`` ground-truth slice.
        organ_ids: organs to prompt (others are ignored).
        z: slice index (seeds the prompts).
    Returns:
        ``{organ_id: Prompt}`` in ``organ_ids`` order, only for organs present.
    """
    out: dict[int, Prompt] = {}
    for organ in organ_ids:
        mask = labels == organ
        if mask.any():
            rng = prompt_rng(settings.seed, case_id, z, organ)
            out[organ] = make_prompt(settings.kind, mask, rng, settings.box_iou)
    return out


@torch.inference_mode()
def decode_organs(model: SamModel, embedding: Tensor, prompts: list[Prompt], slice_size: int) -> Tensor:
    """One decoder call for all prompts of a slice.

    Args:
        embedding: ``(1, C, h, w)`` image embedding of the slice.
        prompts: one prompt per organ (all of the same kind).
    Returns:
        float32 logits ``(K, S, S)`` (one mask per prompt, see the module docstring for the choice).
    """
    image_size = int(model.config.prompt_encoder_config.image_size)
    multimask = prompts[0].kind == "point1"
    inputs = prompt_inputs(prompts, slice_size, image_size, embedding.device)
    out = model(image_embeddings=embedding, multimask_output=multimask, **inputs)
    masks = out.pred_masks[0]  # (K, M, h4, w4)
    if multimask:
        best = out.iou_scores[0].argmax(dim=-1)  # (K,)
        masks = masks[torch.arange(masks.shape[0], device=masks.device), best][:, None]
    masks = F.interpolate(masks.float(), size=(image_size, image_size), mode="bilinear", align_corners=False)
    masks = F.interpolate(masks, size=(slice_size, slice_size), mode="bilinear", align_corners=False)
    return masks[:, 0]


def combine_organs(logits: Tensor, organ_ids: list[int]) -> Tensor:
    """Per-organ logits ``(K, S, S)`` -> label map ``(S, S)`` int64: highest logit > 0 wins, else 0."""
    best_logit, best = logits.max(dim=0)
    ids = torch.tensor(organ_ids, dtype=torch.int64, device=logits.device)
    return torch.where(best_logit > 0, ids[best], torch.zeros_like(best))


@torch.inference_mode()
def segment_slices(model: SamModel, images: np.ndarray, labels: np.ndarray, organ_ids: list[int],
                   settings: PromptSettings, case_id: str, normalization: str = "sam",
                   embed_batch: int = 4, progress: Callable[[int], None] | None = None,
                   ) -> tuple[np.ndarray, int]:
    """Prompted segmentation of a stack of slices.

    Args:
        model: ``SamModel`` (eval mode, on its device) with SAM's 4-token head.
        images: float ``(Z, S, S)`` in [0, 1].
        labels: integer ``(Z, S, S)`` ground truth the prompts are derived from.
        organ_ids: organs to segment.
        settings: prompt kind, box IoU, seed.
        case_id: seeds the prompts.
        normalization: ``"sam"`` or ``"unit"``.
        embed_batch: slices per image-encoder call.
        progress: called with the number of slices done after each batch.
    Returns:
        (uint8/int16 ``(Z, S, S)`` labels, number of prompts used). Slices without any of the
        organs are background and never go through the model.
    """
    if images.shape != labels.shape or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images {images.shape} and labels {labels.shape} must be equal (Z, S, S)")
    device = next(model.parameters()).device
    image_size = int(model.config.vision_config.image_size)
    slice_size = images.shape[-1]
    dtype = np.uint8 if max(organ_ids, default=0) < 256 else np.int16
    pred = np.zeros(labels.shape, dtype=dtype)
    per_slice = {z: slice_prompts(labels[z], organ_ids, settings, case_id, z) for z in range(labels.shape[0])}
    todo = [z for z, p in per_slice.items() if p]
    n_prompts = sum(len(per_slice[z]) for z in todo)
    for start in range(0, len(todo), max(1, embed_batch)):
        chunk = todo[start:start + max(1, embed_batch)]
        batch = torch.from_numpy(np.ascontiguousarray(images[chunk], dtype=np.float32)).to(device)
        embeddings = model.get_image_embeddings(sam_pixel_values(batch, image_size, normalization))
        for i, z in enumerate(chunk):
            organs = list(per_slice[z])
            logits = decode_organs(model, embeddings[i:i + 1], [per_slice[z][o] for o in organs], slice_size)
            pred[z] = combine_organs(logits, organs).cpu().numpy().astype(dtype)
        if progress is not None:
            progress(start + len(chunk))
    return pred, n_prompts
