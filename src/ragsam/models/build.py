"""Builders: architecture + weights (+ PEFT) -> :class:`MultiOrganSam`."""

from __future__ import annotations

from ragsam.errors import InputError
from ragsam.models.config import HEAD_INITS, ModelConfig
from ragsam.models.load_report import LoadReport
from ragsam.models.loading import check_arch, load_pretrained
from ragsam.models.registry import check_image_size, get_arch, sam_config
from ragsam.models.sam import MultiOrganSam
from ragsam.models.weights import read_state_dict


def build_sam_model(arch: str, weights: str = "random", num_classes: int = 13,
                    image_size: int = 512, normalize: str = "sam", head_init: str = "pretrained") -> MultiOrganSam:
    """A prompt-free K-organ SAM with pretrained (or random) weights, all parameters trainable.

    Args:
        arch: registry name (``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``, ``tiny``).
        weights: Hugging Face id or folder, Meta/MedSAM ``.pth``, ``.safetensors`` or ``"random"``.
        num_classes: K organs (the model outputs K + 1 channels).
        image_size: input side S in px; position embeddings are resized from the
            pretraining size when it differs.
        normalize: ``"sam"`` or ``"none"`` (see :class:`~ragsam.models.config.ModelConfig`).
        head_init: ``"pretrained"`` or ``"fresh"`` (see :mod:`ragsam.models.loading`).
    Returns:
        The model; ``model.load_report`` says what was loaded, resized and newly
        initialised.
    Raises:
        InputError: unknown architecture, bad sizes, unusable weights.
    """
    spec = get_arch(arch)
    check_image_size(spec, image_size)
    if num_classes < 1:
        raise InputError(None, f"num_classes must be at least 1, got {num_classes}")
    state = None
    if weights not in ("random", "", None):
        state = read_state_dict(str(weights))  # read and checked before building a big model
        check_arch(state, arch, str(weights))
    if head_init not in HEAD_INITS:
        raise InputError(None, f"model.head_init {head_init!r} is not one of {', '.join(HEAD_INITS)}")
    model = MultiOrganSam(sam_config(spec, image_size, num_mask_tokens=num_classes + 1), arch=arch,
                          normalization=normalize)
    if state is None:
        model.load_report = LoadReport.random(arch, image_size)
    else:
        model.load_report = load_pretrained(model, str(weights), state, head_init=head_init)
    return model


def build_model(cfg: ModelConfig) -> MultiOrganSam:
    """The model of ``cfg``: weights loaded, PEFT applied and ``requires_grad`` set.

    Example:
        >>> model = build_model(ModelConfig(arch="tiny", num_classes=3, image_size=128))
        >>> model(torch.rand(2, 3, 128, 128)).shape
        torch.Size([2, 4, 128, 128])
    """
    from ragsam.peft.apply import apply_peft

    model = build_sam_model(cfg.arch, cfg.weights, cfg.num_classes, cfg.image_size, cfg.normalize, cfg.head_init)
    apply_peft(model, cfg.peft)
    return model
