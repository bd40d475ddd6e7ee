"""How a pretrained model is fine-tuned: ``PeftConfig`` (SAM: LoRA, Med-SA adapters or full) and
``Sam2PeftConfig`` (SAM 2 for retrieval: LoRA or full).

The ``model.peft:`` section of a ``ragsam train`` / ``ragsam train-rag`` configuration;
:func:`ragsam.peft.apply_peft` and :func:`ragsam.peft.sam2.apply_sam2_peft` apply them.
Rules both share live here once (:func:`check_ranks`) and in :func:`ragsam.peft.lora.lora_scale`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ragsam.errors import InputError

PEFT_METHODS = ("lora", "adapter", "none")
LORA_TARGETS = ("q", "k", "v", "proj", "mlp")
DECODER_MODES = ("full", "lora", "frozen")
ADAPTER_INITS = ("zero", "default")
SAM2_PEFT_METHODS = ("lora", "none")
SAM2_LORA_TARGETS = ("q", "k", "v", "proj")
SAM2_DECODER_MODES = DECODER_MODES


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
        train_positional_embedding: with the prompt encoder (or method ``none``), also train
            SAM's random-Fourier matrix ``shared_image_embedding.positional_embedding``
            (2 x 128). ``transformers`` makes it a parameter; in Meta's ``segment_anything``,
            and so in SAMed and Med-SA, it is a buffer that never trains (paper presets: false).
        adapter_init: start of each adapter's up projection: ``"zero"`` (weight and bias 0, so
            the adapted model starts equal to SAM) or ``"default"`` (``nn.Linear``'s own
            initialisation, as Med-SA's ``models/common/adapter.py`` leaves it; medsa preset).
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
    train_positional_embedding: bool = True
    adapter_init: str = "zero"


@dataclass
class Sam2PeftConfig:
    """What trains in SAM 2 (see :mod:`ragsam.peft.sam2`).

    Attributes:
        method: ``"lora"``: everything frozen except LoRA (rank ``rank``) on the attention
            projections ``targets`` of the image encoder (Hiera ``qkv`` slices / ``proj``)
            and of memory attention (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` of its
            self- and cross-attention), plus the mask decoder per ``decoder``.
            ``"none"``: full training, every parameter (e.g. pre-training a tiny SAM 2).
        rank, alpha: LoRA rank r and scale ``alpha / r`` (``None``: scale 1.0, as SAMed).
        targets: subset of ``q, k, v, proj``.
        image_encoder, memory_attention: put LoRA there (``method: lora``).
        decoder: ``"full"`` (the whole mask decoder trains), ``"lora"`` (LoRA rank
            ``decoder_rank`` on q/v of its two-way transformer; its heads train) or ``"frozen"``.
        freeze: extra regular expressions of parameter names to freeze last.
    """

    method: str = "lora"
    rank: int = 4
    alpha: float | None = None
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    image_encoder: bool = True
    memory_attention: bool = True
    decoder: str = "full"
    decoder_rank: int = 4
    freeze: list[str] = field(default_factory=list)


def check_ranks(cfg: PeftConfig | Sam2PeftConfig, prefix: str = "peft.", source: object = None) -> None:
    """The LoRA ranks of either config must be at least 1.

    Raises:
        InputError: naming ``source`` and the key (``<prefix>rank`` / ``<prefix>decoder_rank``).
    """
    for name in ("rank", "decoder_rank"):
        value = getattr(cfg, name)
        if int(value) < 1:
            raise InputError(source, f"{prefix}{name} must be at least 1, got {value}")
