"""Named presets for the public weights ragsam uses (SAM, MedSAM, SAM 2.1, DINOv2).

A preset names a Hugging Face repository (loaded with ``from_pretrained``),
the official download address where one exists, and facts about the
architecture that :func:`ragsam.hub.verify.verify_weights` checks a local copy
against. Meta names its SAM checkpoint files ``<name>_<first 6 hex of sha256>.pth``
(the torch.hub convention), so that prefix is checked where the file carries it;
Meta publishes no checksum for the SAM 2 and DINOv2 files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ragsam.errors import InputError


@dataclass(frozen=True)
class WeightPreset:
    """One named set of public weights.

    Attributes:
        name: preset name used on the command line (``--weights sam-vit-b``).
        family: ``sam`` (SAM and MedSAM), ``sam2`` or ``dinov2``.
        hf_repo: Hugging Face repository id in the transformers format.
        arch: the ragsam architecture it fits (``sam_vit_b`` ...), if any.
        official_url: the authors' own download address (official format), if any.
        sha256_prefix: leading hex digits of the official file's SHA-256, where known.
        config_facts: dotted ``config.json`` keys and the values a faithful copy has.
        description: one line for ``ragsam weights list``.
        official_variant: the released architecture the official file holds, whose every
            tensor name and shape ``weights verify`` checks: the ragsam architecture for SAM
            (``sam_vit_b`` ...), a Hiera size for SAM 2 (``tiny`` ...), Meta's tag for DINOv2
            (``vits14``, ``vits14_reg4`` ...).
    """

    name: str
    family: str
    hf_repo: str | None
    arch: str | None
    official_url: str | None
    sha256_prefix: str | None
    config_facts: dict = field(default_factory=dict)
    description: str = ""
    official_variant: str | None = None


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_DINO_URL = "https://dl.fbaipublicfiles.com/dinov2/"


def _sam(name: str, repo: str, arch: str, file: str | None, width: int, depth: int, desc: str) -> WeightPreset:
    return WeightPreset(
        name=name, family="sam", hf_repo=repo, arch=arch,
        official_url=None if file is None else _SAM_URL + file,
        sha256_prefix=None if file is None else file.rsplit("_", 1)[1].split(".")[0],
        config_facts={"model_type": "sam", "vision_config.hidden_size": width,
                      "vision_config.num_hidden_layers": depth},
        description=desc, official_variant=arch,
    )


def _sam2(name: str, repo: str, file: str, desc: str) -> WeightPreset:
    size = file.split("_hiera_", 1)[1].split(".")[0]  # sam2.1_hiera_base_plus.pt -> base_plus
    return WeightPreset(
        name=name, family="sam2", hf_repo=repo, arch=None, official_url=_SAM2_URL + file,
        sha256_prefix=None, config_facts={"model_type": ("sam2_video", "sam2")}, description=desc,
        official_variant=size,
    )


# Meta's DINOv2 backbones (dinov2/hub/backbones.py): tag -> (width, depth)
_DINO_SIZES = {"vits14": (384, 12), "vitb14": (768, 12), "vitl14": (1024, 24), "vitg14": (1536, 40)}


def _dino(name: str, repo: str, tag: str, desc: str, registers: bool = False) -> WeightPreset:
    width, depth = _DINO_SIZES[tag]
    full = f"{tag}_reg4" if registers else tag
    facts: dict = {"model_type": "dinov2_with_registers" if registers else "dinov2", "hidden_size": width,
                   "num_hidden_layers": depth}
    if registers:
        facts["num_register_tokens"] = 4
    return WeightPreset(
        name=name, family="dinov2", hf_repo=repo, arch=None,
        official_url=f"{_DINO_URL}dinov2_{tag}/dinov2_{full}_pretrain.pth", sha256_prefix=None,
        config_facts=facts, description=desc, official_variant=full,
    )


PRESETS: dict[str, WeightPreset] = {p.name: p for p in (
    _sam("sam-vit-b", "facebook/sam-vit-base", "sam_vit_b", "sam_vit_b_01ec64.pth", 768, 12,
         "SAM ViT-B (91M), the paper's backbone for SAMed"),
    _sam("sam-vit-l", "facebook/sam-vit-large", "sam_vit_l", "sam_vit_l_0b3195.pth", 1024, 24, "SAM ViT-L (308M)"),
    _sam("sam-vit-h", "facebook/sam-vit-huge", "sam_vit_h", "sam_vit_h_4b8939.pth", 1280, 32, "SAM ViT-H (636M)"),
    _sam("medsam-vit-b", "flaviagiammarino/medsam-vit-base", "sam_vit_b", None, 768, 12,
         "MedSAM ViT-B (SAM fully fine-tuned on medical images); the official medsam_vit_b.pth is "
         "linked from the MedSAM project page"),
    _sam2("sam2.1-tiny", "facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", "SAM 2.1 Hiera-T (39M)"),
    _sam2("sam2.1-small", "facebook/sam2.1-hiera-small", "sam2.1_hiera_small.pt", "SAM 2.1 Hiera-S (46M)"),
    _sam2("sam2.1-base-plus", "facebook/sam2.1-hiera-base-plus", "sam2.1_hiera_base_plus.pt",
          "SAM 2.1 Hiera-B+ (81M)"),
    _sam2("sam2.1-large", "facebook/sam2.1-hiera-large", "sam2.1_hiera_large.pt", "SAM 2.1 Hiera-L (224M)"),
    _dino("dinov2-small", "facebook/dinov2-small", "vits14", "DINOv2 ViT-S/14 (21M), 384-d slice embeddings"),
    _dino("dinov2-base", "facebook/dinov2-base", "vitb14", "DINOv2 ViT-B/14 (86M), 768-d slice embeddings"),
    _dino("dinov2-large", "facebook/dinov2-large", "vitl14", "DINOv2 ViT-L/14 (300M), 1024-d"),
    _dino("dinov2-giant", "facebook/dinov2-giant", "vitg14", "DINOv2 ViT-g/14 (1.1B, SwiGLU), 1536-d"),
    _dino("dinov2-small-reg", "facebook/dinov2-with-registers-small", "vits14",
          "DINOv2 ViT-S/14 with 4 register tokens", registers=True),
    _dino("dinov2-base-reg", "facebook/dinov2-with-registers-base", "vitb14",
          "DINOv2 ViT-B/14 with 4 register tokens", registers=True),
    _dino("dinov2-large-reg", "facebook/dinov2-with-registers-large", "vitl14",
          "DINOv2 ViT-L/14 with 4 register tokens", registers=True),
    _dino("dinov2-giant-reg", "facebook/dinov2-with-registers-giant", "vitg14",
          "DINOv2 ViT-g/14 with 4 register tokens", registers=True),
)}


def get_preset(name: str) -> WeightPreset:
    """The preset called ``name``.

    Raises:
        InputError: no such preset (the message lists the known names).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(None, f"unknown weights preset {name!r} (known: {', '.join(PRESETS)})") from None


def resolve_weights(weights: str) -> str:
    """Map a preset name to its Hugging Face id; anything else is returned unchanged.

    Loaders call this first so ``--weights sam-vit-b`` and
    ``--weights facebook/sam-vit-base`` mean the same.
    """
    preset = PRESETS.get(weights)
    if preset is not None and preset.hf_repo is not None:
        return preset.hf_repo
    return weights
