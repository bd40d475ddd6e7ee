"""The original promptable SAM (4 mask tokens) with weights loaded strictly, for the baselines.

The multi-organ model of :mod:`ragsam.models` replaces SAM's head; the prompted
baselines need the published head unchanged (one single-mask token and three
multimask tokens). :func:`load_prompt_sam` builds a plain
``transformers.SamModel`` of a registered architecture and fills it through the
same readers and converters users' weights go through elsewhere
(:func:`ragsam.models.weights.read_state_dict`: Hugging Face id or folder,
Meta SAM / MedSAM ``.pth``, ``.safetensors``), strictly: every missing,
unexpected or mis-shaped key is an :class:`~ragsam.errors.InputError`.
"""

from __future__ import annotations

import torch
from transformers import SamModel

from ragsam.errors import InputError
from ragsam.models.load_report import LoadReport
from ragsam.models.registry import get_arch, sam_config
from ragsam.models.resize import resize_position_tensors
from ragsam.models.vit_attention import set_vit_attention
from ragsam.models.weights import checkpoint_arch, read_state_dict
from ragsam.utils.state_dict import load_exactly

SAM_MASK_TOKENS = 4
"""SAM's own decoder: token 0 = single-mask output, tokens 1-3 = the multimask outputs."""


def load_prompt_sam(arch: str, weights: str, image_size: int | None = None, seed: int = 0) -> tuple[SamModel, LoadReport]:
    """A promptable ``SamModel`` of ``arch`` holding ``weights``, in eval mode on the CPU.

    Args:
        arch: registry name (``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``, ``tiny``).
        weights: Hugging Face id or folder, Meta SAM / MedSAM ``.pth``, ``.safetensors``, or
            ``"random"`` (initialised from ``seed``; for tests and smoke runs only).
        image_size: model input side in px; default the architecture's pretraining size
            (1024 for SAM). Other sizes resize the position embeddings.
        seed: seed of the random initialisation (``"random"`` only).
    Returns:
        ``(model, report)``; the :class:`LoadReport` says ``image_size`` and which position tensors were resized.
    Raises:
        InputError: unknown architecture, unreadable weights, another architecture's checkpoint,
            missing / unexpected / mis-shaped keys.
    """
    spec = get_arch(arch)
    size = int(image_size or spec.pretrain_size)
    config = sam_config(spec, size, num_mask_tokens=SAM_MASK_TOKENS)
    report = LoadReport(source=weights, arch=arch, image_size=size)
    if weights == "random":
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = SamModel(config)
        finally:
            torch.random.set_rng_state(generator_state)
        set_vit_attention(model.vision_encoder, "fused")
        return model.eval(), report
    state = read_state_dict(weights)
    name, width, depth = checkpoint_arch(state)
    if (spec.width, spec.depth) != (width, depth):
        looks = name or f"an unregistered SAM (width {width}, depth {depth})"
        raise InputError(weights, f"checkpoint does not fit architecture {arch!r}: it looks like {looks}"
                                  + (f" (use --arch {name})" if name else ""))
    tokens = state.get("mask_decoder.mask_tokens.weight")
    if tokens is not None and tokens.shape[0] != SAM_MASK_TOKENS:
        raise InputError(weights, f"has {tokens.shape[0]} mask tokens: a multi-organ (fine-tuned) model, not SAM's "
                                  f"promptable {SAM_MASK_TOKENS}-token head; prompted baselines need the original "
                                  "SAM or MedSAM weights")
    model = SamModel(config)
    report.resized = resize_position_tensors(state, {k: v.shape for k, v in model.state_dict().items()})
    load_exactly(model, state, weights, f"{arch!r} with SAM's {SAM_MASK_TOKENS}-token head")
    set_vit_attention(model.vision_encoder, "fused")  # same function as the stock blocks, faster
    return model.eval(), report
