"""The fused SAM ViT block computes the stock block's function, without padded projections or a dense bias."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ragsam.models.build import build_model
from ragsam.models.config import ModelConfig
from ragsam.models.vit_attention import fused_rel_pos_attention, set_vit_attention, vit_attention_impl
from ragsam.peft.config import PeftConfig


def _randomised(image_size: int, method: str) -> torch.nn.Module:
    """Tiny SAM with every encoder tensor random, incl. rel-pos tables, LoRA B and adapter Up (zero at init)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="tiny", num_classes=3, image_size=image_size,
                                    peft=PeftConfig(method=method, rank=2)))
    with torch.no_grad():
        for name, param in model.vision_encoder.named_parameters():
            if "layer_norm" not in name:
                param.normal_(0.0, 0.3 if ("rel_pos" in name or "lora_b" in name or "adapter" in name) else 0.05)
    return model


def _encode_with_grads(model: torch.nn.Module, impl: str, images: torch.Tensor, probe: torch.Tensor):
    set_vit_attention(model, impl)
    model.zero_grad(set_to_none=True)
    out = model.encode(images)
    (out * probe).sum().backward()  # a random probe: sum(out ** 2) is ~constant after the neck's LayerNorm
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def test_fused_attention_equals_softmax_with_the_decomposed_bias_by_hand():
    torch.manual_seed(1)
    batch, heads, height, width, dim = 2, 3, 3, 5, 6  # 6 + 3 + 5 = 14 -> padded to 16
    q, k, v = (torch.randn(batch, heads, height * width, dim, dtype=torch.float64) for _ in range(3))
    rel_h, rel_w = torch.randn(height, height, dim, dtype=torch.float64), torch.randn(width, width, dim,
                                                                                      dtype=torch.float64)
    scale = 0.37
    bias = torch.zeros(batch, heads, height * width, height * width, dtype=torch.float64)
    for i in range(height * width):
        for j in range(height * width):
            yi, xi, yj, xj = i // width, i % width, j // width, j % width
            bias[:, :, i, j] = q[:, :, i] @ rel_h[yi, yj] + q[:, :, i] @ rel_w[xi, xj]
    expected = torch.softmax(scale * q @ k.transpose(-1, -2) + bias, dim=-1) @ v
    got = fused_rel_pos_attention(q, k, v, rel_h, rel_w, scale, (height, width))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    plain = fused_rel_pos_attention(q, k, v, None, None, scale, (height, width))
    torch.testing.assert_close(plain, torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1) @ v)


@pytest.mark.parametrize(("image_size", "method"), [(96, "lora"), (128, "adapter"), (96, "none")])
def test_fused_block_matches_stock_eager_outputs_and_gradients(image_size, method):
    # 96 px: 6 x 6 tokens, window 4 -> padded windows; 128 px: 8 x 8, no padding.
    model = _randomised(image_size, method)
    images = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(2))
    probe = torch.randn(2, 32, image_size // 16, image_size // 16, generator=torch.Generator().manual_seed(3))
    ref_out, ref_grads = _encode_with_grads(model, "eager", images, probe)
    out, grads = _encode_with_grads(model, "fused", images, probe)
    assert ref_out.std() > 0.5  # a live encoder, not a constant
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        scale = ref_grads[name].abs().max()
        assert (grad - ref_grads[name]).abs().max() <= 1e-5 * scale + 1e-12, name


def test_windowed_projection_runs_on_real_tokens_only():
    model = _randomised(96, "lora")  # 6 x 6 tokens; stock pads to 8 x 8 before qkv
    rows = []
    block = model.vision_encoder.layers[0]
    assert block.window_size == 4
    handle = block.attn.qkv.register_forward_hook(lambda mod, inp, out: rows.append(inp[0][..., 0].numel()))
    for impl in ("eager", "fused"):
        set_vit_attention(model, impl)
        with torch.no_grad():
            model.encode(torch.rand(1, 3, 96, 96))
    handle.remove()
    assert rows == [64, 36, 1]  # stock: 8 * 8 padded tokens; fused: 36 real tokens, then the qkv(0) filler


def test_folded_attention_trains_through_the_flash_kernel_with_the_explicit_gradients():
    torch.manual_seed(4)
    batch, heads, side, dim = 2, 2, 4, 8
    rel_h, rel_w = torch.randn(side, side, dim), torch.randn(side, side, dim)
    inputs = [torch.randn(batch, heads, side * side, dim, requires_grad=True) for _ in range(3)]
    probe = torch.randn(batch, heads, side * side, dim)
    grads = {}
    for explicit in (True, False):
        for tensor in inputs:
            tensor.grad = None
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION] if not explicit else [SDPBackend.MATH]):
            out = fused_rel_pos_attention(*inputs, rel_h, rel_w, dim ** -0.5, (side, side), explicit=explicit)
            (out * probe).sum().backward()
        grads[explicit] = [t.grad.clone() for t in inputs]
    for folded, materialised in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(folded, materialised, rtol=1e-5, atol=1e-5)


def test_stock_sdpa_block_cannot_train_through_the_flash_kernel():
    model = _randomised(128, "lora")
    set_vit_attention(model, "sdpa")
    with (warnings.catch_warnings(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]),
          pytest.raises(RuntimeError, match="No available kernel")):
        warnings.simplefilter("ignore")  # PyTorch's "flash attention kernel not used because ..." note
        model.encode(torch.rand(1, 3, 128, 128)).sum().backward()  # its dense bias needs grad


def test_switching_keeps_parameters_and_names():
    model = _randomised(96, "adapter")
    assert vit_attention_impl(model) == "fused"  # MultiOrganSam's default
    keys = list(model.state_dict())
    assert set_vit_attention(model, "eager") == 4 and vit_attention_impl(model) == "eager"
    assert set_vit_attention(model, "sdpa") == 4 and vit_attention_impl(model) == "sdpa"
    assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="fused"):
        set_vit_attention(model, "flash")


def test_folded_path_under_bf16_autocast_matches_fp32_eager():
    # The GPU path: folded SDPA under bf16 autocast (here on the CPU, no grad -> folded, not explicit).
    model = _randomised(96, "lora").eval()
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    set_vit_attention(model, "eager")
    with torch.no_grad():
        reference = model.encode(images)
    set_vit_attention(model, "fused")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low_precision = model.encode(images)
    assert low_precision.dtype == torch.bfloat16  # the whole block ran in bf16 (no silent fp32 promotion)
    error = (low_precision.float() - reference).abs().max() / reference.abs().max()
    assert error < 3e-2
