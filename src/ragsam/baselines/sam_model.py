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
from ragsam.models.registry import get_arch, sam_config
from ragsam.models.resize import resize_position_tensors
from ragsam.models.weights import checkpoint_arch, read_state_dict

SAM_MASK_TOKENS = 4
"""SAM's own decoder: token 0 = single-mask output, tokens 1-3 = the multimask outputs."""


def _short(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def load_prompt_sam(arch: str, weights: str, image_size: int | None = None, seed: int = 0) -> tuple[SamModel, dict]:
    """A promptable ``SamModel`` of ``arch`` holding ``weights``, in eval mode on the CPU.

    Args:
        arch: registry name (``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``, ``tiny``).
        weights: Hugging Face id or folder, Meta SAM / MedSAM ``.pth``, ``.safetensors``, or
            ``"random"`` (initialised from ``seed``; for tests and smoke runs only).
        image_size: model input side in px; default the architecture's pretraining size
            (1024 for SAM). Other sizes resize the position embeddings.
        seed: seed of the random initialisation (``"random"`` only).
    Returns:
        (model, report) where report has ``source``, ``arch``, ``image_size`` and ``resized`` keys.
    Raises:
        InputError: unknown architecture, unreadable weights, another architecture's checkpoint,
            missing / unexpected / mis-shaped keys.
    """
    spec = get_arch(arch)
    size = int(image_size or spec.pretrain_size)
    config = sam_config(spec, size, num_mask_tokens=SAM_MASK_TOKENS)
    report: dict = {"source": weights, "arch": arch, "image_size": size, "resized": []}
    if weights == "random":
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = SamModel(config)
        finally:
            torch.random.set_rng_state(generator_state)
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
    target = model.state_dict()
    shapes = {k: v.shape for k, v in target.items()}
    report["resized"] = resize_position_tensors(state, shapes)
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing:
        raise InputError(weights, f"{len(missing)} model weights missing from the checkpoint: {_short(missing)}")
    if unexpected:
        raise InputError(weights, f"{len(unexpected)} unexpected keys in the checkpoint: {_short(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(shapes[k])}" for k in sorted(target)
             if tuple(state[k].shape) != tuple(shapes[k])]
    if wrong:
        raise InputError(weights, f"{len(wrong)} weights have the wrong shape for {arch!r} with SAM's "
                                  f"{SAM_MASK_TOKENS}-token head: {_short(wrong)}")
    with torch.no_grad():
        model.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
    return model.eval(), report


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> the first CUDA GPU if there is one, else Apple MPS, else CPU; others as given.

    Raises:
        InputError: an unknown device string, or a CUDA device on a machine without CUDA.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(None, f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"device {device!r} requested but CUDA is not available here")
    return dev
