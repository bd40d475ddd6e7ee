"""How a support's mask becomes SAM 2 memory: Meta's conditioning-frame route, and its hole filling.

Facts from Meta's ``sam2`` 1.1.0 (``sam2/modeling/sam2_base.py``, ``sam2/sam2_video_predictor.py``,
``sam2/utils/misc.py``, ``sam2/build_sam.py``), for a frame given a mask with ``add_new_mask``:

1. the mask (``I x I`` px, {0, 1}) is used as the frame's output (``_use_mask_as_output``): logits
   ``20 * m - 10`` at ``I`` px, and low-res logits = those downsampled to ``I/4`` (bilinear, antialiased);
2. the object pointer comes from the mask decoder prompted by ``mask_downsample(m)`` with
   ``multimask_output=False``: output token 0 (transformers' ``_use_mask_as_output`` leaves its
   ``_single_frame_forward`` at ``multimask_output=True`` and takes the best of tokens 1-3); the pointer
   is then replaced by the no-object pointer when the mask is empty;
3. the low-res logits go through ``fill_holes_in_mask_scores`` (``fill_hole_area`` = 8 in
   ``build_sam2_video_predictor``'s post-processing, on every frame's low-res output);
4. before tracking, the (filled) low-res logits are upsampled to ``I`` px (bilinear, no antialias)
   and encoded with ``is_mask_from_pts=True``: binarised at 0, mapped to ``+-10``, memory encoder,
   plus the occlusion embedding when the mask is empty (object score ``20 * any(m) - 10``).

Hole filling (``fill_holes_in_mask_scores``): holes are the 8-connected components of
``logits <= 0`` with area ``<= max_area`` low-res pixels (wherever they lie, border included); they
get the logit 0.1. Meta computes the components with its CUDA extension and, when it is missing
(every CPU install), skips the step with a warning, so Meta's CPU output is unfilled. ragsam fills
on every device (SciPy's labelling, the same 8-connectivity), i.e. what Meta computes with its
extension; ``fill_hole_area=0`` gives Meta's CPU behaviour.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MaskRoute = Literal["meta", "direct"]
MASK_SCALE, MASK_BIAS = 20.0, -10.0  # Meta: input masks as logits +10 / -10
HOLE_LOGIT = 0.1  # Meta: the small positive score given to filled holes
META_FILL_HOLE_AREA = 8  # build_sam2_video_predictor(apply_postprocessing=True)


def default_mask_route(image_size: int) -> MaskRoute:
    """``"meta"`` from 512 px input (Meta's models are 1024 px), else ``"direct"``: through a 16 px
    low-res map (64 px input) organs a few pixels wide vanish from the memory (docs/paper-fidelity.md)."""
    return "meta" if image_size >= 512 else "direct"


def default_fill_hole_area(image_size: int) -> int:
    """Meta's ``fill_hole_area`` (8 low-res pixels at the 1024 px input of every released SAM 2)
    scaled to the same fraction of the image at ``image_size``, rounded down."""
    return (META_FILL_HOLE_AREA * image_size * image_size) // (1024 * 1024)


def fill_holes(logits: Tensor, max_area: int) -> Tensor:
    """Meta's ``fill_holes_in_mask_scores``: ``(..., H, W)`` logits with small background holes set to 0.1.

    A hole is an 8-connected component of ``logits <= 0`` with at most ``max_area`` pixels.
    ``max_area <= 0`` returns ``logits`` unchanged. Differentiable except inside filled holes.
    """
    if max_area <= 0 or logits.numel() == 0:
        return logits
    from scipy import ndimage

    background = (logits <= 0).detach().cpu().numpy().reshape(-1, *logits.shape[-2:])
    holes = np.zeros_like(background)
    eight = np.ones((3, 3), dtype=bool)
    for i, bg in enumerate(background):
        labels, n = ndimage.label(bg, structure=eight)
        if n == 0:
            continue
        areas = np.bincount(labels.ravel())
        small = areas <= max_area
        small[0] = False  # label 0 is foreground
        holes[i] = small[labels]
    if not holes.any():
        return logits
    mask = torch.from_numpy(holes.reshape(logits.shape)).to(logits.device)
    return torch.where(mask, torch.as_tensor(HOLE_LOGIT, dtype=logits.dtype, device=logits.device), logits)


def mask_logits(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, 1, I, I)`` {0, 1} masks -> (high-res logits ``(B, 1, I, I)``, low-res logits ``(B, 1, I/4, I/4)``)."""
    high = mask.float() * MASK_SCALE + MASK_BIAS
    side = (high.shape[-2] // 4, high.shape[-1] // 4)
    low = F.interpolate(high, size=side, mode="bilinear", align_corners=False, antialias=True)
    return high, low


def memory_masks(mask: Tensor, route: MaskRoute, fill_hole_area: int) -> Tensor:
    """The ``(B, 1, I, I)`` logits that the memory encoder receives for conditioning masks ``mask``.

    ``"meta"``: steps 1, 3, 4 of the module docstring; ``"direct"``: ``20 * m - 10`` at ``I`` px
    (transformers' video session; on the parity test's masks 88 of 157,376 pixels differ).
    """
    high, low = mask_logits(mask)
    if route == "direct":
        return high
    low = fill_holes(low, fill_hole_area)
    return F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=False)


def mask_pointer(model, top: Tensor, high_res: list[Tensor], mask: Tensor) -> tuple[Tensor, Tensor]:
    """Object pointer ``(B, 1, C)`` and object score logits ``(B, 1, 1)`` of conditioning masks (step 2).

    Args:
        model: a transformers ``Sam2VideoModel``.
        top: ``(B, C, H, W)`` top-level image features; ``high_res``: the two finer FPN levels.
        mask: ``(B, 1, I, I)`` {0, 1} masks at the model input size.
    """
    out = model._single_frame_forward(input_masks=model.mask_downsample(mask.to(top.dtype)),
                                      image_embeddings=[*high_res, top], multimask_output=False)
    present = (mask.flatten(1) > 0).any(dim=1).to(top.dtype)[:, None, None]
    pointer = present * out.object_pointer + (1 - present) * model.no_object_pointer
    return pointer, MASK_SCALE * present + MASK_BIAS
