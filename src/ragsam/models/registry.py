"""Named SAM architectures (the hyper-parameters of the published checkpoints).

Each entry gives the ViT image encoder, prompt encoder and mask decoder sizes at
the resolution the weights were pretrained at (1024 px for SAM, a 64 x 64 patch
grid). :func:`sam_config` builds a ``transformers.SamConfig`` for any input size
and number of mask tokens. ``tiny`` has exactly the same structure at toy sizes
so that tests run the real code path in well under a second on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import SamConfig

from ragsam.errors import InputError

PATCH_SIZE = 16


@dataclass(frozen=True)
class SamArch:
    """Hyper-parameters of one SAM variant.

    Attributes:
        width: ViT hidden size C. depth: number of ViT blocks. heads: ViT heads.
        global_attn: indexes of the global-attention blocks (the others are windowed).
        window: window side (patches) of the windowed blocks.
        pretrain_size: image side (px) the weights were trained at.
        out_channels: image-embedding channels (= prompt/decoder width).
        mlp_dim: ViT MLP width. decoder_mlp: two-way transformer MLP width.
        decoder_heads: two-way transformer heads. iou_hidden: IoU head width.
        mask_in_chans: prompt encoder mask-downscaling channels.
    """

    width: int
    depth: int
    heads: int
    global_attn: tuple[int, ...]
    window: int = 14
    pretrain_size: int = 1024
    out_channels: int = 256
    mlp_dim: int | None = None
    decoder_mlp: int = 2048
    decoder_heads: int = 8
    iou_hidden: int = 256
    mask_in_chans: int = 16

    @property
    def vit_mlp_dim(self) -> int:
        return self.mlp_dim if self.mlp_dim is not None else 4 * self.width


ARCHITECTURES: dict[str, SamArch] = {
    "sam_vit_b": SamArch(width=768, depth=12, heads=12, global_attn=(2, 5, 8, 11)),
    "sam_vit_l": SamArch(width=1024, depth=24, heads=16, global_attn=(5, 11, 17, 23)),
    "sam_vit_h": SamArch(width=1280, depth=32, heads=16, global_attn=(7, 15, 23, 31)),
    "tiny": SamArch(width=64, depth=4, heads=2, global_attn=(1, 3), window=4, pretrain_size=128,
                    out_channels=32, mlp_dim=128, decoder_mlp=64, decoder_heads=2, iou_hidden=32,
                    mask_in_chans=8),
}


def get_arch(name: str) -> SamArch:
    """The architecture called ``name``.

    Raises:
        InputError: unknown name (the message lists the known ones).
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise InputError(None, f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})") from None


def check_image_size(arch: SamArch, image_size: int) -> None:
    """Refuse input sizes the ViT cannot take (not a positive multiple of the patch)."""
    if image_size <= 0 or image_size % PATCH_SIZE:
        raise InputError(None, f"image_size {image_size} must be a positive multiple of {PATCH_SIZE}")


def sam_config(arch: SamArch, image_size: int | None = None, num_mask_tokens: int = 4) -> SamConfig:
    """A ``transformers.SamConfig`` for ``arch`` at ``image_size`` px with ``num_mask_tokens`` tokens.

    ``num_mask_tokens`` is K + 1 for a K-organ model (SAM's own decoder has 4:
    one single-mask token and three multimask tokens). The decoder's LayerNorm
    epsilon is 1e-5, the value of Meta's ``nn.LayerNorm`` that every published
    checkpoint was trained with (the transformers port uses 1e-6).
    """
    size = image_size or arch.pretrain_size
    check_image_size(arch, size)
    vision = {
        "hidden_size": arch.width, "num_hidden_layers": arch.depth, "num_attention_heads": arch.heads,
        "global_attn_indexes": list(arch.global_attn), "window_size": arch.window, "image_size": size,
        "patch_size": PATCH_SIZE, "output_channels": arch.out_channels, "mlp_dim": arch.vit_mlp_dim,
        "num_pos_feats": arch.out_channels // 2,
        # transformers' SamVisionConfig defaults to initializer_range=1e-10, which leaves a
        # randomly initialised encoder dead (weights ~1e-10, output independent of the image).
        # Pretrained weights overwrite every tensor; random models (tests, demo) need a live one.
        "initializer_range": 0.02,
    }
    prompt = {"hidden_size": arch.out_channels, "image_size": size, "patch_size": PATCH_SIZE,
              "mask_input_channels": arch.mask_in_chans}
    decoder = {"hidden_size": arch.out_channels, "mlp_dim": arch.decoder_mlp,
               "num_attention_heads": arch.decoder_heads, "num_multimask_outputs": num_mask_tokens - 1,
               "iou_head_hidden_dim": arch.iou_hidden, "layer_norm_eps": 1e-5}
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def identify_arch(width: int, depth: int) -> str | None:
    """The registered architecture with ViT ``width`` and ``depth``, if any."""
    for name, arch in ARCHITECTURES.items():
        if arch.width == width and arch.depth == depth:
            return name
    return None
