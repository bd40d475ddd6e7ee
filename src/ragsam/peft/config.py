"""``PeftConfig``: how the pretrained SAM is fine-tuned (LoRA, Med-SA adapters or full).

The ``model.peft:`` section of a training configuration; :func:`ragsam.peft.apply_peft`
applies it to a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PEFT_METHODS = ("lora", "adapter", "none")
LORA_TARGETS = ("q", "k", "v", "proj", "mlp")
DECODER_MODES = ("full", "lora", "frozen")


@dataclass
class PeftConfig:
    """How the pretrained SAM is fine-tuned.

    Attributes:
        method: ``"lora"`` (SAMed: LoRA in every image-encoder block),
            ``"adapter"`` (Med-SA: two bottleneck adapters per block) or
            ``"none"`` (full fine-tuning: everything trainable).
        rank: LoRA rank r of the encoder bypasses.
        alpha: LoRA scale is ``alpha / rank``; ``None`` means scale 1.0
            (SAMed adds the plain ``B @ A`` update).
        targets: encoder LoRA targets, a subset of ``q, k, v`` (slices of the
            fused qkv projection), ``proj`` (attention output) and ``mlp``
            (both MLP linears).
        decoder: mask decoder mode: ``"full"`` (all decoder parameters
            trainable, SAMed), ``"lora"`` (SAMed_s: LoRA on the q/v projections
            of the two-way transformer, which is frozen; the segmentation head
            (tokens, upscaling, hypernetwork MLPs, IoU head) stays trainable) or
            ``"frozen"`` (nothing in the decoder trains except decoder adapters).
        decoder_rank: LoRA rank in the decoder (``decoder="lora"``).
        adapter_ratio: Med-SA bottleneck width as a fraction of the block width.
        adapter_scale: scale s of the MLP-parallel adapter.
        decoder_adapters: also put adapters in the two-way transformer blocks.
        freeze: extra regular expressions (``re.search`` on parameter names)
            of parameters to freeze after everything else is decided.
        train_prompt_encoder: make the prompt encoder trainable (its no-mask
            embedding is the only part used by the prompt-free model).
    """

    method: str = "lora"
    rank: int = 4
    alpha: float | None = None
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    decoder: str = "full"
    decoder_rank: int = 4
    adapter_ratio: float = 0.25
    adapter_scale: float = 0.5
    decoder_adapters: bool = False
    freeze: list[str] = field(default_factory=list)
    train_prompt_encoder: bool = False
