"""Configuration dataclasses of the segmentation model and its fine-tuning method.

These are the ``model:`` section of a training configuration (see
``ragsam.config.load_config``); :func:`ragsam.models.build_model` turns a
:class:`ModelConfig` into a ready-to-train :class:`~ragsam.models.sam.MultiOrganSam`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ragsam.peft.config import PeftConfig

NORMALIZATIONS = ("sam", "none")
HEAD_INITS = ("pretrained", "fresh")


@dataclass
class ModelConfig:
    """Which SAM, which weights, how many organs, at what input size.

    Attributes:
        arch: a key of :data:`ragsam.models.registry.ARCHITECTURES`
            (``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``, ``tiny``).
        weights: a Hugging Face id or local folder (``facebook/sam-vit-base``,
            ``flaviagiammarino/medsam-vit-base``), an official Meta SAM or MedSAM
            ``.pth`` state dict, or ``"random"``.
        num_classes: K organs; the model outputs K + 1 channels (0 = background).
        image_size: input side S in pixels (multiple of the 16 px patch);
            SAM was pretrained at 1024, SAMed uses 512.
        peft: the fine-tuning method.
        normalize: what the image encoder receives from a slice ``x`` in [0, 1]:
            ``"sam"`` SAM's ImageNet statistics, ``(255 x - mean) / std``; ``"none"``
            the slice itself (SAMed builds SAM with pixel mean 0 and std 1).
        head_init: start of the K + 1 mask tokens, their hypernetwork MLPs and the
            IoU head: ``"pretrained"`` copies SAM's tokens 0-3 into tokens 0-3 (new
            tokens >= 4 keep the random init); ``"fresh"`` (SAMed's ``load_from``)
            drops all of SAM's tokens, hypernetworks and IoU head and starts them
            from PyTorch's default initialisation.

    The defaults are ragsam's own choices (and what runs saved before these
    options existed were trained with); the paper presets set SAMed's values.
    """

    arch: str = "sam_vit_b"
    weights: str = "random"
    num_classes: int = 13
    image_size: int = 512
    peft: PeftConfig = field(default_factory=PeftConfig)
    normalize: str = "sam"
    head_init: str = "pretrained"
