"""Convert official Meta SAM / MedSAM state dicts to the ``transformers`` SAM layout.

The mapping is derived from the two module trees, Meta's
``segment_anything.modeling`` (``Sam``: ``image_encoder`` / ``prompt_encoder`` /
``mask_decoder``) and ``transformers.models.sam.modeling_sam`` (``SamModel``).
Only names change; every tensor keeps its shape and values. ``nn.Sequential``
children become named modules (``neck.0`` -> ``neck.conv1``), Meta's 3-layer
``MLP.layers.{0,1,2}`` become ``proj_in`` / ``layers.0`` / ``proj_out``.
"""

from __future__ import annotations

import re

from torch import Tensor

from ragsam.errors import InputError

# (official name prefix, transformers name prefix) of the modules SAM and SAM 2 share and
# transformers renames alike: the prompt encoder's mask downscaling and the mask decoder's
# output upscaling. The one table for both families and both directions (SAM 2:
# ragsam.models.convert_sam2, official -> transformers and back).
SAM_RENAMES: tuple[tuple[str, str], ...] = (
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
)


def prefix_rules(pairs: tuple[tuple[str, str], ...], inverse: bool = False) -> list[tuple[str, str]]:
    """``(regex, replacement)`` rules renaming each prefix of ``pairs``: official -> transformers,
    or transformers -> official with ``inverse``."""
    return [("^" + re.escape(hf if inverse else official), official if inverse else hf) for official, hf in pairs]


# (Meta pattern, transformers replacement); applied in order, first match wins.
_RULES: list[tuple[str, str]] = [
    # image encoder (ViT with windowed / global attention)
    (r"^image_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^image_encoder\.pos_embed$", "vision_encoder.pos_embed"),
    (r"^image_encoder\.blocks\.(\d+)\.norm1\.", r"vision_encoder.layers.\1.layer_norm1."),
    (r"^image_encoder\.blocks\.(\d+)\.norm2\.", r"vision_encoder.layers.\1.layer_norm2."),
    (r"^image_encoder\.blocks\.(\d+)\.attn\.(qkv|proj)\.", r"vision_encoder.layers.\1.attn.\2."),
    (r"^image_encoder\.blocks\.(\d+)\.attn\.(rel_pos_[hw])$", r"vision_encoder.layers.\1.attn.\2"),
    (r"^image_encoder\.blocks\.(\d+)\.mlp\.(lin[12])\.", r"vision_encoder.layers.\1.mlp.\2."),
    (r"^image_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^image_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^image_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^image_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    # prompt encoder
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "shared_image_embedding.positional_embedding"),
    (r"^prompt_encoder\.point_embeddings\.(\d+)\.", r"prompt_encoder.point_embed.\1."),
    (r"^prompt_encoder\.(not_a_point_embed|no_mask_embed)\.", r"prompt_encoder.\1."),
    # mask decoder: two-way transformer
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.",
     r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\."
     r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\.(q_proj|k_proj|v_proj|out_proj)\.",
     r"mask_decoder.transformer.layers.\1.\2.\3."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])\.", r"mask_decoder.transformer.layers.\1.mlp.\2."),
    (r"^mask_decoder\.transformer\.final_attn_token_to_image\.(q_proj|k_proj|v_proj|out_proj)\.",
     r"mask_decoder.transformer.final_attn_token_to_image.\1."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    # mask decoder: tokens, upscaling, hypernetworks, IoU head
    (r"^mask_decoder\.(iou_token|mask_tokens)\.", r"mask_decoder.\1."),
    *prefix_rules(SAM_RENAMES),
    (r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.0\.", r"mask_decoder.\1.proj_in."),
    (r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.1\.", r"mask_decoder.\1.layers.0."),
    (r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.2\.", r"mask_decoder.\1.proj_out."),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]

# Buffers of Meta's ``Sam`` that are not weights: the pixel statistics are
# constants of the model (checked against ours), not parameters.
_META_BUFFERS = ("pixel_mean", "pixel_std")
TIED_KEY = "prompt_encoder.shared_embedding.positional_embedding"
SHARED_KEY = "shared_image_embedding.positional_embedding"


def is_meta_layout(state_dict: dict[str, Tensor]) -> bool:
    """True if the keys are those of Meta's ``segment_anything`` ``Sam``."""
    return any(k.startswith("image_encoder.") for k in state_dict)


def convert_meta_key(key: str) -> str | None:
    """The transformers name of Meta key ``key`` (``None`` if no rule matches)."""
    for pattern, replacement in _COMPILED:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def convert_meta_state_dict(state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Rename every key of a Meta SAM / MedSAM state dict to the transformers layout.

    The positional matrix is stored under both names transformers uses (the
    shared image embedding and the prompt encoder's tied copy).

    Raises:
        InputError: a key has no counterpart (listed in the message), so
            nothing is silently dropped.
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key in _META_BUFFERS:
            continue
        new = convert_meta_key(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise InputError(source, f"{len(unknown)} keys of this SAM checkpoint have no counterpart: {shown}")
    if SHARED_KEY in out:
        out[TIED_KEY] = out[SHARED_KEY]
    return out
