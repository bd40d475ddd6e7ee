"""Fixtures for the model tests: tiny checkpoints and the official Meta SAM implementation.

``import segment_anything`` imports torchvision (for its predictor and mask
generator utilities), which is absent here; the modeling code never calls it.
The ``official_sam`` fixture therefore puts a minimal stub ``torchvision``
package tree into ``sys.modules`` while importing ``segment_anything`` (and
removes it again), then builds a tiny ``Sam`` directly from the
``segment_anything.modeling`` classes, as ``build_sam._build_sam`` does for
ViT-B/L/H, with every tensor randomised so that no weight is trivially zero.
"""

from __future__ import annotations

import sys
import types
from functools import partial
from pathlib import Path

import pytest
import torch

from ragsam.models.registry import ARCHITECTURES


def _import_segment_anything():
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.ops", "torchvision.ops.boxes"]
    saved = {n: sys.modules.get(n) for n in names}
    try:
        for n in names:
            stub = types.ModuleType(n)
            stub.__path__ = []  # a package, so that submodules resolve
            sys.modules[n] = stub
        fn = sys.modules["torchvision.transforms.functional"]
        fn.resize = fn.to_pil_image = None
        boxes = sys.modules["torchvision.ops.boxes"]
        boxes.batched_nms = boxes.box_area = None
        import segment_anything.modeling as modeling
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return modeling


def build_official(arch: str, num_multimask_outputs: int = 3) -> torch.nn.Module:
    """An official ``segment_anything`` Sam with the hyper-parameters of ragsam's ``arch``, as
    ``build_sam._build_sam`` builds ViT-B/L/H (weights as Meta's constructors leave them)."""
    m = _import_segment_anything()
    a = ARCHITECTURES[arch]
    grid = a.pretrain_size // 16
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=a.depth, embed_dim=a.width, img_size=a.pretrain_size, mlp_ratio=a.vit_mlp_dim / a.width,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=a.heads, patch_size=16, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=a.global_attn, window_size=a.window, out_chans=a.out_channels),
        prompt_encoder=m.PromptEncoder(embed_dim=a.out_channels, image_embedding_size=(grid, grid),
                                       input_image_size=(a.pretrain_size, a.pretrain_size),
                                       mask_in_chans=a.mask_in_chans),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=num_multimask_outputs,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=a.out_channels, mlp_dim=a.decoder_mlp,
                                            num_heads=a.decoder_heads),
            transformer_dim=a.out_channels, iou_head_depth=3, iou_head_hidden_dim=a.iou_hidden),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def build_official_tiny(seed: int = 0, num_multimask_outputs: int = 3) -> torch.nn.Module:
    """A randomly initialised official ``segment_anything`` Sam with the ``tiny`` hyper-parameters."""
    torch.manual_seed(seed)
    sam = build_official("tiny", num_multimask_outputs)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "norm" in name or name.endswith("output_upscaling.1.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return sam.eval()


@pytest.fixture(scope="session")
def official_sam() -> torch.nn.Module:
    """The tiny official Meta SAM (random weights, seed 0)."""
    return build_official_tiny()


@pytest.fixture(scope="session")
def meta_checkpoint(official_sam: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``official_sam``'s state dict saved with ``torch.save`` like Meta's ``sam_vit_b_01ec64.pth``."""
    path = tmp_path_factory.mktemp("meta") / "sam_tiny.pth"
    torch.save(official_sam.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def official_sam_layout():
    """``arch -> {name: shape}`` of Meta's Sam state dict for that architecture (built on the meta device)."""
    def layout(arch: str) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in build_official(arch).state_dict().items()}
    return layout
