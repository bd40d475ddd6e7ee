"""Prompt-free SAM 2 segmentation of a query slice conditioned on retrieved support slices (RAG-SAM 3.3).

For a query slice and ``k`` support slices with organ labels:

1. every support image goes through the SAM 2 image encoder once;
2. for every organ, the support's mask of that organ is encoded by SAM 2's memory
   encoder into a spatial memory (+ an object pointer), the support acting as a
   *conditioning frame* (a frame with a user-given mask). A support without the
   organ gives the memory of an empty mask (SAM 2's "object absent" memory, with
   the occlusion embedding and the no-object pointer), as it would in a video;
3. the query's image features attend to those memories (memory attention);
4. the mask decoder runs with NO prompt (SAM 2's padding point, label -1, exactly
   what the library feeds on a tracked frame without clicks), one object per organ;
5. per-organ logits are merged: a pixel is background unless some organ logit is
   > 0 (probability > 0.5, SAM's own binarisation); otherwise it takes the organ with
   the largest logit. Per-organ sigmoid probabilities are returned too.

With the defaults this computes what Meta's ``sam2`` video predictor (1.1.0, built by
``build_sam2_video_predictor``) computes when the supports are frames ``0..k-1`` of a video,
each object given its mask with ``add_new_mask``, and the query is frame ``k`` reached by
``propagate_in_video`` (``tests/retrieval/test_sam2_meta_parity.py`` checks it against Meta's
package). Facts from Meta's ``sam2_base.py`` / ``sam2_video_predictor.py`` (the same in
transformers' ``modeling_sam2_video.py`` unless said):

* every conditioning frame gets the same temporal encoding (slot ``-1`` of
  ``memory_temporal_positional_encoding``), so the spatial memories do not depend on
  support order or distance;
* object pointers of conditioning frames are used only for frames at or before the
  query in eval mode, with a sine encoding of the frame distance ``k - t`` (SAM 2.1;
  SAM 2.0 checkpoints have no pointer encoding). With ``pointer_positions="sequential"``
  (the video semantics) the result therefore depends on support order; callers put
  the most similar support last (closest to the query). ``"shared"`` gives every
  support distance 1, which makes the result invariant to support order;
* a support's object pointer comes from output token 0 and, from 512 px input (Meta's
  models are 1024 px), its mask reaches the memory encoder by Meta's conditioning-frame route
  with Meta's hole filling (``fill_hole_area`` 8 at 1024 px; also on the query's low-res
  logits): :mod:`ragsam.retrieval.sam2_mask_route` (transformers' video session differs on
  all three); memory features are stored in bfloat16;
* each support adds ``(image_size / 16)^2`` memory tokens (4096 at 1024 px), so memory
  attention cost grows linearly with ``k``.

Inputs are slices windowed to [0, 1]; they are resized to the model's input size and
normalised with the ImageNet mean / std only (the video processor's 1/255 rescale is
for uint8 frames and does not apply).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import Sam2VideoModel

from ragsam.errors import InputError
from ragsam.retrieval.sam2_mask_route import (
    MaskRoute,
    default_fill_hole_area,
    default_mask_route,
    fill_holes,
    mask_pointer,
    memory_masks,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PointerPositions = Literal["sequential", "shared"]
_F = TypeVar("_F", bound=Callable[..., Any])


def _inference_unless_differentiable(fn: _F) -> _F:
    """Run ``fn`` under ``torch.inference_mode`` unless its segmenter is ``differentiable``.

    Inference (``ragsam segment``) keeps the fast no-autograd path and cacheable tensors;
    episodic training (:mod:`ragsam.training.rag_model`) sets ``differentiable`` so the same
    code builds a graph through the image encoder, memory encoder, memory attention and decoder.
    """

    @functools.wraps(fn)
    def wrapper(self: Sam2MemorySegmenter, *args: Any, **kwargs: Any) -> Any:
        if self.differentiable:
            return fn(self, *args, **kwargs)
        with torch.inference_mode():
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass
class FrameFeatures:
    """Image-encoder output of one slice, as the video session caches it.

    ``feats[l]``: ``(H_l * W_l, 1, C_l)`` for the three FPN levels (levels 0 and 1 already
    projected by the decoder's ``conv_s0`` / ``conv_s1``); ``pos[l]``: matching positional encodings.
    """

    feats: list[Tensor]
    pos: list[Tensor]


@dataclass
class ObjectMemory:
    """One organ's memory on one support: ``features`` ``(HW, 1, 64)`` bfloat16, ``pointer`` ``(1, C)``."""

    features: Tensor
    pointer: Tensor
    present: bool


@dataclass
class SupportMemory:
    """Everything a query needs from one support slice (image features are not kept).

    ``organs``: memories of the organs present on the support; ``empty``: the memory of an
    empty mask (used for organs absent from this support); ``pos_enc``: ``(HW, 1, 64)``.
    """

    organs: dict[int, ObjectMemory]
    empty: ObjectMemory
    pos_enc: Tensor
    key: Hashable | None = None

    def memory(self, organ: int) -> ObjectMemory:
        """The memory of ``organ`` on this support (the empty-mask memory when absent)."""
        return self.organs.get(organ, self.empty)


@dataclass
class Sam2Prediction:
    """Per-organ output for one query slice (``K`` organs, ``S x S`` query pixels).

    ``logits`` / ``probabilities``: ``(K, S, S)`` float32; ``low_res_logits``: ``(K, I/4, I/4)``
    (the decoder's output, ``I`` = model input size); ``object_scores``: ``(K,)`` logits of
    "organ visible"; ``labels``: ``(S, S)`` int64 organ ids (0 = background).
    """

    organ_ids: list[int]
    logits: Tensor
    low_res_logits: Tensor
    object_scores: Tensor
    probabilities: Tensor
    labels: Tensor = field(repr=False)


def preprocess_slices(images: Tensor, image_size: int) -> Tensor:
    """``(B, S, S)`` or ``(B, 3, S, S)`` in [0, 1] -> ``(B, 3, I, I)`` ImageNet-normalised SAM 2 input."""
    x = images.float()
    if x.ndim == 3:
        x = x[:, None].expand(-1, 3, -1, -1)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, S, S) or (B, 3, S, S) slices, got {tuple(images.shape)}")
    if tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_mask(mask: Tensor, image_size: int) -> Tensor:
    """Binary ``(S, S)`` mask -> ``(1, 1, I, I)`` float {0, 1}, resized as the SAM 2 processor does."""
    m = mask.float()[None, None]
    if tuple(m.shape[-2:]) != (image_size, image_size):
        m = F.interpolate(m, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        m = (m >= 0.5).float()
    return m


def merge_organ_logits(logits: Tensor, organ_ids: Sequence[int]) -> Tensor:
    """``(K, S, S)`` organ logits -> ``(S, S)`` int64 labels (see module docstring, step 5)."""
    if len(organ_ids) == 0:
        return torch.zeros(logits.shape[-2:], dtype=torch.int64, device=logits.device)
    ids = torch.as_tensor(list(organ_ids), dtype=torch.int64, device=logits.device)
    best, idx = logits.max(dim=0)
    return torch.where(best > 0, ids[idx], torch.zeros_like(idx))


class Sam2MemorySegmenter:
    """SAM 2 memory encoder + memory attention + prompt-free decoder over retrieved supports.

    Args:
        model: a ``Sam2VideoModel`` in eval mode (see :func:`ragsam.models.sam2.build_sam2`).
        pointer_positions: ``"sequential"`` (support ``t`` of ``k`` is frame ``t``, the query
            frame ``k``: the video semantics) or ``"shared"`` (every support one frame
            before the query: order-invariant).
        use_empty_supports: condition an organ also on supports that do not contain it
            (their "absent" memory), as a video would; ``False`` uses only supports showing it.
        mask_route: how a support mask reaches the memory encoder: ``"meta"`` (Meta's
            ``add_new_mask`` route, :mod:`ragsam.retrieval.sam2_mask_route`) or ``"direct"``
            (the ``I`` px mask itself, as transformers' video session). Default: ``"meta"`` from
            512 px input (every released SAM 2 is 1024 px), ``"direct"`` for smaller models
            (the ``I/4`` px route erases organs a few pixels wide at the demo's 64 px).
        fill_hole_area: Meta's ``fill_hole_area`` (low-res pixels), applied to support masks on
            the ``"meta"`` route and to the query's low-res logits. Default: Meta's 8 at 1024 px
            input, the same fraction of the image at other sizes (0 below 363 px, e.g. the shipped
            64 px tiny SAM 2); 0 turns it off (Meta's output on a CPU without its CUDA extension).

    Attributes:
        differentiable: ``False`` (default): every method runs in ``torch.inference_mode``.
            ``True`` (episodic training): the same computations keep autograd graphs.

    Example:
        >>> seg = Sam2MemorySegmenter(model)
        >>> mems = [seg.encode_support(img, lab) for img, lab in zip(sup_images, sup_labels)]
        >>> pred = seg.segment(seg.encode_images(query[None])[0], mems, output_size=(512, 512))
    """

    def __init__(self, model: Sam2VideoModel, pointer_positions: PointerPositions = "sequential",
                 use_empty_supports: bool = True, mask_route: MaskRoute | None = None,
                 fill_hole_area: int | None = None) -> None:
        if pointer_positions not in ("sequential", "shared"):
            raise InputError(None, f"pointer_positions must be 'sequential' or 'shared', got {pointer_positions!r}")
        if mask_route not in ("meta", "direct", None):
            raise InputError(None, f"mask_route must be 'meta' or 'direct', got {mask_route!r}")
        if fill_hole_area is not None and fill_hole_area < 0:
            raise InputError(None, f"fill_hole_area must be >= 0 low-res pixels, got {fill_hole_area}")
        self.model = model
        self.pointer_positions = pointer_positions
        self.use_empty_supports = use_empty_supports
        self.differentiable = False
        self.image_size = int(model.config.image_size)
        self.mask_route: MaskRoute = default_mask_route(self.image_size) if mask_route is None else mask_route
        self.fill_hole_area = default_fill_hole_area(self.image_size) if fill_hole_area is None else int(fill_hole_area)
        self.device = next(model.parameters()).device

    # ----------------------------------------------------------------- encoders
    @_inference_unless_differentiable
    def encode_images(self, images: Tensor | np.ndarray) -> list[FrameFeatures]:
        """Image-encoder features of ``(B, S, S)`` slices in [0, 1] (one batched pass)."""
        pixels = preprocess_slices(torch.as_tensor(images).to(self.device), self.image_size)
        return self.encode_pixels(pixels)

    @_inference_unless_differentiable
    def encode_pixels(self, pixels: Tensor) -> list[FrameFeatures]:
        """Image-encoder features of already normalised ``(B, 3, I, I)`` model inputs."""
        out = self.model.get_image_features(pixels.to(self.device), return_dict=True)
        return [FrameFeatures([f[:, b : b + 1] for f in out.fpn_hidden_states],
                              [p[:, b : b + 1] for p in out.fpn_position_encoding]) for b in range(pixels.shape[0])]

    def _split_levels(self, frame: FrameFeatures) -> tuple[list[Tensor], Tensor]:
        sizes = self.model.backbone_feature_sizes
        high = [x.permute(1, 2, 0).reshape(1, x.shape[2], *s) for x, s in zip(frame.feats[:-1], sizes[:-1], strict=True)]
        top = frame.feats[-1].permute(1, 2, 0).reshape(1, self.model.hidden_dim, *sizes[-1])
        return high, top

    @_inference_unless_differentiable
    def encode_support(self, image: Tensor | np.ndarray | FrameFeatures, labels: Tensor | np.ndarray,
                       organs: Iterable[int] | None = None, key: Hashable | None = None) -> SupportMemory:
        """Encode one support slice: image features, then one memory per organ on it.

        Args:
            image: ``(S, S)`` slice in [0, 1], or its :class:`FrameFeatures`.
            labels: ``(S, S)`` integer organ ids (0 = background).
            organs: organs to encode (default: every non-zero id on the slice); ids absent
                from the slice are not stored (they use the empty-mask memory).
            key: an identifier kept with the memory (e.g. ``(case_id, z)``).
        """
        frame = image if isinstance(image, FrameFeatures) else self.encode_images(torch.as_tensor(image)[None])[0]
        lab = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).to(self.device)
        wanted = sorted(int(o) for o in (organs if organs is not None else torch.unique(lab).tolist()) if int(o) != 0)
        present = [o for o in wanted if bool((lab == o).any())]
        masks = [resize_mask(lab == o, self.image_size) for o in present]
        masks.append(torch.zeros(1, 1, self.image_size, self.image_size, device=self.device))
        high, top = self._split_levels(frame)
        outs = [mask_pointer(self.model, top, high, m) for m in masks]  # one call per object, as Meta
        stacked = torch.cat(masks)
        feats, pos = self.model._encode_new_memory(
            current_vision_feats=frame.feats[-1].expand(-1, len(masks), -1),
            pred_masks_high_res=memory_masks(stacked, self.mask_route, self.fill_hole_area),
            object_score_logits=torch.cat([score for _, score in outs], dim=0),
            is_mask_from_pts=True,
        )
        memories = [ObjectMemory(feats[:, i : i + 1].clone(), outs[i][0], i < len(present))
                    for i in range(len(masks))]
        return SupportMemory(dict(zip(present, memories[:-1], strict=True)), memories[-1], pos[:, :1].clone(), key)

    # -------------------------------------------------------------- conditioning
    def _memory_inputs(self, supports: Sequence[SupportMemory], organ: int) -> tuple[Tensor, Tensor, int]:
        """Memory tokens ``(N, 1, 64)``, their positional encodings and the pointer-token count."""
        model = self.model
        k = len(supports)
        cond = {t: s.memory(organ) for t, s in enumerate(supports)
                if self.use_empty_supports or organ in s.organs}
        selected, unselected = model._select_closest_cond_frames(k, cond, model.config.max_cond_frame_num)
        tpos = model.memory_temporal_positional_encoding
        memories, positions = [], []
        for t, mem in selected.items():
            memories.append(mem.features.float())
            positions.append(supports[t].pos_enc + tpos[-1])  # conditioning frames: relative position 0
        if self.pointer_positions == "sequential":  # unselected conditioning frames in the recent window
            for offset in range(model.num_maskmem - 1, 0, -1):
                if (mem := unselected.get(k - offset)) is not None:
                    memories.append(mem.features.float())
                    positions.append(supports[k - offset].pos_enc + tpos[offset - 1])
        offsets = [k - t if self.pointer_positions == "sequential" else 1 for t in cond]
        pointers = [mem.pointer for mem in cond.values()]
        max_pointers = min(k + 1, model.config.max_object_pointers_in_encoder)
        n_ptr = 0
        if pointers:
            ptr, ptr_pos = model._process_object_pointers(offsets, pointers, max_pointers, 1, model.hidden_dim,
                                                          self.device)
            memories.append(ptr.float())
            positions.append(ptr_pos)
            n_ptr = int(ptr.shape[0])
        return torch.cat(memories, dim=0), torch.cat(positions, dim=0), n_ptr

    @_inference_unless_differentiable
    def segment(self, query: FrameFeatures | Tensor | np.ndarray, supports: Sequence[SupportMemory],
                organs: Iterable[int] | None = None, output_size: tuple[int, int] | None = None) -> Sam2Prediction:
        """Segment one query slice from encoded supports.

        Args:
            query: :class:`FrameFeatures` of the query, or the ``(S, S)`` slice in [0, 1].
            supports: encoded supports, in frame order (see ``pointer_positions``).
            organs: organs to predict (default: every organ present on some support).
                An organ absent from every support is never predicted.
            output_size: ``(H, W)`` of the returned maps (default: the query slice's size,
                or the model input size when features are given).
        """
        if not supports:
            raise InputError(None, "at least one support slice is needed to segment by retrieval")
        if not isinstance(query, FrameFeatures):
            q = torch.as_tensor(query)
            output_size = output_size or (int(q.shape[-2]), int(q.shape[-1]))
            query = self.encode_images(q[None])[0]
        out_hw = output_size or (self.image_size, self.image_size)
        available = set().union(*(s.organs for s in supports))
        wanted = sorted(available if organs is None else {int(o) for o in organs} & available)
        model = self.model
        high, _ = self._split_levels(query)
        h, w = model.backbone_feature_sizes[-1]
        multimask = model._use_multimask(False, None)
        low, scores = [], []
        for organ in wanted:
            memory, memory_pos, n_ptr = self._memory_inputs(supports, organ)
            conditioned = model.memory_attention(
                current_vision_features=query.feats[-1],
                current_vision_position_embeddings=query.pos[-1],
                memory=memory,
                memory_posision_embeddings=memory_pos,
                num_object_pointer_tokens=n_ptr,
            )
            pix = conditioned.squeeze(1).transpose(1, 2).reshape(1, model.hidden_dim, h, w)
            out = model._single_frame_forward(image_embeddings=[*high, pix], multimask_output=multimask)
            low.append(fill_holes(out.pred_masks.reshape(out.pred_masks.shape[-2:]).float(), self.fill_hole_area))
            scores.append(out.object_score_logits.reshape(()).float())
        side = self.image_size // 4
        low_res = torch.stack(low) if low else torch.zeros(0, side, side, device=self.device)
        logits = upsample_logits(low_res, self.image_size, out_hw)
        object_scores = torch.stack(scores) if scores else torch.zeros(0, device=self.device)
        return Sam2Prediction(wanted, logits, low_res, object_scores, torch.sigmoid(logits),
                              merge_organ_logits(logits, wanted))

    def segment_slice(self, query: Tensor | np.ndarray, support_images: Tensor | np.ndarray,
                      support_labels: Tensor | np.ndarray, organs: Iterable[int] | None = None) -> Sam2Prediction:
        """Uncached convenience: ``(S, S)`` query, ``(k, S, S)`` support images and labels."""
        images = torch.as_tensor(np.asarray(support_images) if not torch.is_tensor(support_images)
                                 else support_images)
        frames = self.encode_images(torch.cat([torch.as_tensor(query)[None].to(images.dtype), images]))
        supports = [self.encode_support(f, lab) for f, lab in zip(frames[1:], support_labels, strict=True)]
        return self.segment(frames[0], supports, organs, output_size=tuple(torch.as_tensor(query).shape[-2:]))


def upsample_logits(low_res: Tensor, image_size: int, output_size: tuple[int, int]) -> Tensor:
    """``(K, h, w)`` decoder logits -> ``(K, H, W)``, as the SAM 2 processor post-processes masks
    (bilinear to the model input size, then bilinear to the slice size)."""
    if low_res.shape[0] == 0:
        return low_res.new_zeros(0, *output_size)
    x = F.interpolate(low_res[:, None], (image_size, image_size), mode="bilinear", align_corners=False)
    if tuple(output_size) != (image_size, image_size):
        x = F.interpolate(x, tuple(output_size), mode="bilinear", align_corners=False)
    return x[:, 0]
