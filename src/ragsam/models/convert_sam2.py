"""Official SAM 2 / SAM 2.1 checkpoints (``sam2.1_hiera_tiny.pt`` ...) -> transformers ``Sam2VideoModel``.

Meta's ``.pt`` files hold ``{"model": state_dict}`` with the module names of the
``sam2`` repository (``SAM2Base``). The mapping below was derived from the two
module trees (``sam2.modeling`` and ``transformers.models.sam2_video``) and is
strict: a key that no rule maps, or a transformers weight that no checkpoint key
fills, is an error.

Rules (official -> transformers):

* ``image_encoder.trunk`` -> ``vision_encoder.backbone`` (``patch_embed.proj`` ->
  ``patch_embed.projection``, ``norm1/2`` -> ``layer_norm1/2``);
  ``image_encoder.neck.convs.i.conv`` -> ``vision_encoder.neck.convs.i``.
* Every ``MLP`` with ``n`` linear layers ``layers.0..n-1`` -> ``proj_in``,
  ``layers.0..n-3``, ``proj_out`` (Hiera MLPs, two-way transformer MLPs,
  hypernetwork MLPs, IoU / object-score heads, ``obj_ptr_proj``).
* ``sam_prompt_encoder`` -> ``prompt_encoder``: ``point_embeddings.{0..3}.weight``
  are stacked into ``point_embed.weight``; ``mask_downscaling.{0,1,3,4,6}`` ->
  ``mask_embed.{conv1,layer_norm1,conv2,layer_norm2,conv3}``;
  ``pe_layer.positional_encoding_gaussian_matrix`` fills both
  ``prompt_encoder.shared_embedding.positional_embedding`` and the model's
  ``shared_image_embedding.positional_embedding``.
* ``sam_mask_decoder`` -> ``mask_decoder``: ``out_proj`` -> ``o_proj``, ``normK`` ->
  ``layer_normK``, ``norm_final_attn`` -> ``layer_norm_final_attn``,
  ``output_upscaling.{0,1,3}`` -> ``upscale_conv1``, ``upscale_layer_norm``, ``upscale_conv2``.
* ``memory_attention``: ``normK`` -> ``layer_normK``, ``norm`` -> ``layer_norm``, ``out_proj`` -> ``o_proj``.
* ``memory_encoder``: ``mask_downsampler.encoder.{3j, 3j+1}`` -> ``layers.j.{conv, layer_norm}``
  and its last conv -> ``final_conv``; ``pix_feat_proj`` -> ``feature_projection``;
  ``fuser.layers.i.{dwconv,norm,pwconv1,pwconv2,gamma}`` ->
  ``memory_fuser.layers.i.{depthwise_conv,layer_norm,pointwise_conv1,pointwise_conv2,scale}``;
  ``out_proj`` -> ``projection``.
* Top level: ``maskmem_tpos_enc`` -> ``memory_temporal_positional_encoding``,
  ``no_mem_embed`` -> ``no_memory_embedding``, ``no_mem_pos_enc`` ->
  ``no_memory_positional_encoding``, ``no_obj_ptr`` -> ``no_object_pointer``,
  ``no_obj_embed_spatial`` (2.1 only) -> ``occlusion_spatial_embedding_parameter``,
  ``obj_ptr_proj`` -> ``object_pointer_proj``, ``obj_ptr_tpos_proj`` (2.1 only) ->
  ``temporal_positional_encoding_projection_layer``, ``mask_downsample`` unchanged.

The architecture is not stored in the file: :func:`official_config` recognises
the four released Hiera sizes (t, s, b+, l) from the trunk's width and block
count, and SAM 2.0 vs 2.1 from the presence of ``no_obj_embed_spatial``.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor
from transformers import Sam2VideoConfig

from ragsam.errors import InputError
from ragsam.models.convert_sam import SAM_RENAMES, prefix_rules

# name: (embed_dim, heads, blocks per stage, global attention blocks, window spec, pos-embed background)
HIERA_VARIANTS: dict[str, tuple[int, int, list[int], list[int], list[int], list[int]]] = {
    "tiny": (96, 1, [1, 2, 7, 2], [5, 7, 9], [8, 4, 14, 7], [7, 7]),
    "small": (96, 1, [1, 2, 11, 2], [7, 10, 13], [8, 4, 14, 7], [7, 7]),
    "base_plus": (112, 2, [2, 3, 16, 3], [12, 16, 20], [8, 4, 14, 7], [14, 14]),
    "large": (144, 2, [2, 6, 36, 4], [23, 33, 43], [8, 4, 16, 8], [7, 7]),
}

# Plain renames, applied in order to the part after the top-level module.
_RENAMES: list[tuple[str, str]] = [
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"^obj_ptr_proj\.", "object_pointer_proj."),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"\.norm(\d)\.", r".layer_norm\1."),
    (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
    (r"^memory_attention\.norm\.", "memory_attention.layer_norm."),
    (r"\.out_proj\.", ".o_proj."),
    *prefix_rules(SAM_RENAMES),  # shared with SAM (ragsam.models.convert_sam)
    (r"^memory_encoder\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^memory_encoder\.o_proj\.", "memory_encoder.projection."),
    (r"^memory_encoder\.fuser\.", "memory_encoder.memory_fuser."),
    (r"\.dwconv\.", ".depthwise_conv."),
    (r"\.pwconv(\d)\.", r".pointwise_conv\1."),
    (r"\.memory_fuser\.layers\.(\d+)\.norm\.", r".memory_fuser.layers.\1.layer_norm."),
    (r"\.memory_fuser\.layers\.(\d+)\.gamma$", r".memory_fuser.layers.\1.scale"),
]
_TOP_LEVEL = {
    "maskmem_tpos_enc": "memory_temporal_positional_encoding",
    "no_mem_embed": "no_memory_embedding",
    "no_mem_pos_enc": "no_memory_positional_encoding",
    "no_obj_ptr": "no_object_pointer",
    "no_obj_embed_spatial": "occlusion_spatial_embedding_parameter",
    "mask_downsample.weight": "mask_downsample.weight",
    "mask_downsample.bias": "mask_downsample.bias",
}
_GAUSSIAN = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_GAUSSIAN_HF = ("prompt_encoder.shared_embedding.positional_embedding", "shared_image_embedding.positional_embedding")
_POINT = re.compile(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$")
_MLP = re.compile(r"^(.*\.(?:mlp|output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)"
                  r"|obj_ptr_proj)\.layers\.(\d+)\.(weight|bias)$")
_DOWNSAMPLER = re.compile(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(weight|bias)$")


def is_official_layout(state: dict[str, Tensor]) -> bool:
    """True when ``state`` uses the official ``sam2`` module names."""
    return any(k.startswith("image_encoder.trunk.") for k in state)


def _mlp_depths(keys: list[str]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for key in keys:
        if m := _MLP.match(key):
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 1)
    return depth


def _rename(key: str, mlp_depth: dict[str, int], downsampler_last: int) -> str | None:
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key]
    if m := _MLP.match(key):
        prefix, i, kind = m.group(1), int(m.group(2)), m.group(3)
        n = mlp_depth[prefix]
        part = "proj_in" if i == 0 else "proj_out" if i == n - 1 else f"layers.{i - 1}"
        key = f"{prefix}.{part}.{kind}"
    if m := _DOWNSAMPLER.match(key):
        i, kind = int(m.group(1)), m.group(2)
        if i == downsampler_last:
            return f"memory_encoder.mask_downsampler.final_conv.{kind}"
        if i % 3 == 2:  # GELU slots hold no weights
            return None
        part = "conv" if i % 3 == 0 else "layer_norm"
        return f"memory_encoder.mask_downsampler.layers.{i // 3}.{part}.{kind}"
    known = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "memory_attention.",
             "memory_encoder.", "obj_ptr_proj.", "obj_ptr_tpos_proj.")
    if not key.startswith(known):
        return None
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def convert_official_state_dict(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Rename an official SAM 2 state dict to transformers ``Sam2VideoModel`` names.

    Args:
        state: the ``"model"`` entry of an official ``.pt`` file.
        source: the file name, for error messages.
    Returns:
        A new dict in the transformers layout (tensors shared, not copied).
    Raises:
        InputError: a key no rule maps (the strictness the official loader also has).
    """
    keys = list(state)
    mlp_depth = _mlp_depths(keys)
    down = [int(m.group(1)) for k in keys if (m := _DOWNSAMPLER.match(k))]
    downsampler_last = max(down) if down else -1
    out: dict[str, Tensor] = {}
    points: dict[int, Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        if key == _GAUSSIAN:
            for name in _GAUSSIAN_HF:
                out[name] = value
            continue
        if m := _POINT.match(key):
            points[int(m.group(1))] = value
            continue
        new = _rename(key, mlp_depth, downsampler_last)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    if unmapped:
        raise InputError(source, f"{len(unmapped)} checkpoint keys are not SAM 2 weights: {unmapped[:4]}")
    if points:
        if sorted(points) != list(range(len(points))):
            raise InputError(source, f"point embeddings {sorted(points)} are not numbered 0..n-1")
        out["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in range(len(points))], dim=0)
    return out


def official_config(state: dict[str, Tensor], source: str) -> tuple[Sam2VideoConfig, str]:
    """The ``Sam2VideoConfig`` of an official checkpoint (one of the released sizes).

    Returns:
        ``(config, name)`` with ``name`` like ``"sam2.1_hiera_tiny"``.
    Raises:
        InputError: the trunk matches none of the released Hiera sizes.
    """
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        raise InputError(source, "not an official SAM 2 checkpoint (no image_encoder.trunk.patch_embed.proj.weight)")
    width = int(patch.shape[0])
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))})
    depth = len(blocks)
    # a block with its own "proj" starts a new stage (the channel count doubles there)
    starts = [b for b in blocks if f"image_encoder.trunk.blocks.{b}.proj.weight" in state]
    bounds = [0, *starts, depth]
    stages = [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]
    found = [n for n, v in HIERA_VARIANTS.items() if v[0] == width and v[2] == stages]
    if not found:
        raise InputError(source, f"unknown Hiera trunk (width {width}, blocks per stage {stages}); "
                                 f"released sizes: {sorted(HIERA_VARIANTS)}")
    name = found[0]
    is_21 = "no_obj_embed_spatial" in state
    config = hiera_config(name, is_21, tpos="obj_ptr_tpos_proj.weight" in state)
    return config, f"sam2{'.1' if is_21 else ''}_hiera_{name}"


def hiera_config(name: str, is_21: bool = True, tpos: bool = True) -> Sam2VideoConfig:
    """The ``Sam2VideoConfig`` of a released size (``tiny``, ``small``, ``base_plus``, ``large``).

    Args:
        is_21: SAM 2.1 (``no_obj_embed_spatial``) rather than 2.0.
        tpos: the object pointers' temporal encoding is projected (``obj_ptr_tpos_proj``,
            ``proj_tpos_enc_in_obj_ptrs: true`` in the 2.1 configs).
    """
    embed, heads, stage_blocks, global_blocks, windows, background = HIERA_VARIANTS[name]
    dims = [embed * 2**i for i in range(4)]
    return Sam2VideoConfig(
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": {
                "model_type": "sam2_hiera_det_model", "hidden_size": embed, "num_attention_heads": heads,
                "blocks_per_stage": stage_blocks, "embed_dim_per_stage": dims,
                "num_attention_heads_per_stage": [heads * 2**i for i in range(4)],
                "window_size_per_stage": windows, "global_attention_blocks": global_blocks,
                "window_positional_embedding_background_size": background,
            },
            "backbone_channel_list": dims[::-1],
        },
        enable_occlusion_spatial_embedding=is_21,
        enable_temporal_pos_encoding_for_object_pointers=tpos,
    )


def official_shapes(config: Sam2VideoConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of an official ``.pt`` of the architecture ``config``.

    Built from ``Sam2VideoModel`` on the meta device (no memory) through
    :func:`to_official_state_dict`, so verification and conversion share one set of rules.
    For the four 2.1 sizes this equals, name for name and shape for shape, the state dict of
    Meta's ``SAM2Base`` built from ``sam2`` 1.1.0's ``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``
    (471, 519, 615 and 903 tensors; checked once by hand on 2026-12-06, not in CI).
    """
    from transformers import Sam2VideoModel

    with torch.device("meta"):
        model = Sam2VideoModel(config)
    # equal stand-ins for the two copies of the Fourier matrix, which the inverse mapping compares
    state = {k: torch.zeros(()).expand(v.shape) for k, v in model.state_dict().items()}
    return {k: tuple(v.shape) for k, v in to_official_state_dict(state).items()}


def to_official_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`convert_official_state_dict`: transformers names -> official names.

    Used to write official-format test checkpoints from tiny models and to check
    the mapping by round trip (``convert(to_official(s))`` must give ``s`` back).
    """
    inverse: dict[str, Tensor] = {}
    mlp_prefixes: dict[str, int] = {}
    for key in state:
        if m := re.match(r"^(.*)\.(proj_in|proj_out|layers\.(\d+))\.(weight|bias)$", key):
            if m.group(1).startswith(("vision_encoder.neck", "memory_encoder.mask_downsampler")):
                continue
            depth = int(m.group(3)) + 3 if m.group(3) is not None else 2
            mlp_prefixes[m.group(1)] = max(mlp_prefixes.get(m.group(1), 2), depth)
    copies = [state[k] for k in _GAUSSIAN_HF if k in state]
    if len(copies) == 2 and not torch.equal(copies[0], copies[1]):
        raise ValueError(f"{_GAUSSIAN_HF[0]} and {_GAUSSIAN_HF[1]} differ; SAM 2 stores one matrix for both")
    top = {v: k for k, v in _TOP_LEVEL.items()}
    n_down = 1 + max((int(m.group(1)) for k in state
                      if (m := re.match(r"^memory_encoder\.mask_downsampler\.layers\.(\d+)\.", k))), default=-1)
    for key, value in state.items():
        if key in _GAUSSIAN_HF:
            inverse[_GAUSSIAN] = value
            continue
        if key == "prompt_encoder.point_embed.weight":
            for i in range(value.shape[0]):
                inverse[f"sam_prompt_encoder.point_embeddings.{i}.weight"] = value[i : i + 1].clone()
            continue
        if key in top:
            inverse[top[key]] = value
            continue
        new = key
        if m := re.match(r"^(.*)\.(proj_in|proj_out|layers\.(\d+))\.(weight|bias)$", key):
            prefix, part, kind = m.group(1), m.group(2), m.group(4)
            if prefix in mlp_prefixes:
                n = mlp_prefixes[prefix]
                i = 0 if part == "proj_in" else n - 1 if part == "proj_out" else int(m.group(3)) + 1
                new = f"{prefix}.layers.{i}.{kind}"
        if m := re.match(r"^memory_encoder\.mask_downsampler\.layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)$", new):
            new = f"memory_encoder.mask_downsampler.encoder.{3 * int(m.group(1)) + (m.group(2) == 'layer_norm')}" \
                  f".{m.group(3)}"
        new = re.sub(r"^memory_encoder\.mask_downsampler\.final_conv\.",
                     f"memory_encoder.mask_downsampler.encoder.{3 * n_down}.", new)
        for pattern, repl in (
            (r"^vision_encoder\.backbone\.", "image_encoder.trunk."),
            (r"^vision_encoder\.neck\.convs\.(\d+)\.", r"image_encoder.neck.convs.\1.conv."),
            *prefix_rules(SAM_RENAMES, inverse=True),  # the shared SAM table, backwards
            (r"^prompt_encoder\.", "sam_prompt_encoder."),
            (r"^mask_decoder\.", "sam_mask_decoder."),
            (r"^object_pointer_proj\.", "obj_ptr_proj."),
            (r"^temporal_positional_encoding_projection_layer\.", "obj_ptr_tpos_proj."),
            (r"\.patch_embed\.projection\.", ".patch_embed.proj."),
            (r"\.layer_norm_final_attn\.", ".norm_final_attn."),
            (r"^memory_attention\.layer_norm\.", "memory_attention.norm."),
            (r"\.layer_norm(\d)\.", r".norm\1."),
            (r"\.o_proj\.", ".out_proj."),
            (r"^memory_encoder\.feature_projection\.", "memory_encoder.pix_feat_proj."),
            (r"^memory_encoder\.projection\.", "memory_encoder.out_proj."),
            (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.layer_norm\.", r"memory_encoder.fuser.layers.\1.norm."),
            (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.scale$", r"memory_encoder.fuser.layers.\1.gamma"),
            (r"^memory_encoder\.memory_fuser\.", "memory_encoder.fuser."),
            (r"\.depthwise_conv\.", ".dwconv."),
            (r"\.pointwise_conv(\d)\.", r".pwconv\1."),
        ):
            new = re.sub(pattern, repl, new)
        inverse[new] = value
    return inverse
