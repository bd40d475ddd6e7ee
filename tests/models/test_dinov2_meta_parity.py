"""ragsam's DINOv2 embedder on an official ``.pth`` equals Meta's own computation.

Reference: Meta's ``DinoVisionTransformer`` (PyPI ``dinov2`` 0.0.1.dev2, see
``meta_dinov2.py``; for the register variants Meta's modules plus the newest Meta
token order and interpolation). Weights: official-format, seeded, every tensor
perturbed (position embeddings strongly) so that the resampling of the position
embeddings changes the neighbours: with transformers' rule the top-8 lists change.
ViT-S/14's grid and patch (37 x 37 x 14 px) and 64-wide heads, 128 wide and 2 blocks
deep so that 30 slices at 518 px run in seconds; one full-size ViT-S/14 is checked too.

Tolerances, from the measured spread (seeds 0-3 with and without registers, 224 and
518 px; 2 threads with ``avx2`` and 1 thread with ``ATEN_CPU_CAPABILITY=default``;
2-core AMD EPYC under load): the unit embeddings differ from Meta's by at most 6.7e-7
per component, slice-to-slice similarities by at most 1.0e-6, and the cosine is at
least 1 - 1.8e-7. The bars are three times that (2e-6, 3e-6) and the issue's cosine
>= 0.999999. Top-8 lists are defined only where no two similarities are closer than
the error can move them, so the test first asserts that Meta's own lists have no such
near-tie (every gap among the 9 best > 2 * SIM_TOL; measured gaps >= 9e-6 for the
seeds used), then that ragsam's lists are identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from meta_dinov2 import ct_slices, meta_backbone, meta_features, top_k

from ragsam.models.dinov2 import load_dinov2
from ragsam.retrieval.embedder import SliceEmbedder, build_embedder

COS_MIN = 1 - 1e-6  # the bar: cosine >= 0.999999
D_TOL = 2e-6  # per-component |ours - Meta| of unit embeddings; measured <= 6.7e-7
SIM_TOL = 3e-6  # |similarity(ours) - similarity(Meta)|; measured <= 1.0e-6
SLICES = ct_slices()  # 30 phantom slices, 96 x 96


def _meta_embeddings(model, state, emb: SliceEmbedder, pooling: str = "cls") -> np.ndarray:
    out = []
    for start in range(0, len(SLICES), 10):
        cls, patches = meta_features(model, emb.preprocess(SLICES[start:start + 10]), state.get("register_tokens"))
        out.append(F.normalize(cls if pooling == "cls" else patches.mean(1), dim=-1).numpy())
    return np.concatenate(out)


def _compare(ours: np.ndarray, ref: np.ndarray) -> None:
    assert float((ours * ref).sum(1).min()) >= COS_MIN
    assert float(np.abs(ours - ref).max()) <= D_TOL
    assert float(np.abs(ours @ ours.T - ref @ ref.T).max()) <= SIM_TOL
    ref_lists, gap = top_k(ref)
    assert gap > 2 * SIM_TOL, "the test data has near-tied neighbours: choose slices whose lists are defined"
    our_lists, _ = top_k(ours)
    np.testing.assert_array_equal(our_lists, ref_lists)


# seed per variant: one whose neighbour lists have no near-tie at either size (see the module docstring)
@pytest.mark.parametrize(("registers", "seed"), [(0, 0), (4, 2)])
@pytest.mark.parametrize("size", [224, pytest.param(518, marks=pytest.mark.slow)])
def test_official_pth_embeds_as_meta_dinov2(tmp_path, registers, seed, size):
    model, state = meta_backbone(seed, registers=registers)
    torch.save(state, tmp_path / "dinov2_test_pretrain.pth")
    emb = build_embedder(str(tmp_path / "dinov2_test_pretrain.pth"), image_size=size)
    assert emb.identity["pos_interpolation"] == ("meta offset=0.0 antialias=True" if registers
                                                 else "meta offset=0.1 antialias=False")
    _compare(emb.embed(SLICES, batch_size=10), _meta_embeddings(model, state, emb))
    if size != 224:
        return
    mean = build_embedder(str(tmp_path / "dinov2_test_pretrain.pth"), pooling="mean", image_size=size)
    ours, ref = mean.embed(SLICES, batch_size=10), _meta_embeddings(model, state, mean, "mean")
    assert float((ours * ref).sum(1).min()) >= COS_MIN  # patch tokens only: the registers are left out
    assert float(np.abs(ours - ref).max()) <= D_TOL


@pytest.mark.parametrize(("registers", "seed"), [(0, 0), (4, 2)])
def test_hf_folders_keep_transformers_rule(tmp_path, registers, seed):
    """A plain Hugging Face folder of the same tensors (no ``ragsam_pos_interpolation``)
    computes transformers' rule, bit for bit what transformers computes.

    Without registers that rule differs from Meta's, and these weights are sensitive to it:
    the cosine drops below the bar and top-8 lists change. With registers transformers'
    rule (``size``, antialias) is Meta's register rule (offset 0, antialias): equal.
    """
    model, state = meta_backbone(seed, registers=registers)
    torch.save(state, tmp_path / "w.pth")
    meta_rule, _ = load_dinov2(tmp_path / "w.pth")
    plain = type(meta_rule)(meta_rule.config.__class__(**{
        k: v for k, v in meta_rule.config.to_dict().items() if k != "ragsam_pos_interpolation"})).eval()
    plain.load_state_dict(meta_rule.state_dict())
    plain.save_pretrained(tmp_path / "hf")
    folder = build_embedder(str(tmp_path / "hf"), image_size=224)
    assert folder.identity["pos_interpolation"] == "transformers"
    ours = folder.embed(SLICES, batch_size=10)
    with torch.no_grad():
        direct = F.normalize(plain(pixel_values=folder.preprocess(SLICES)).last_hidden_state[:, 0], dim=-1).numpy()
    np.testing.assert_array_equal(ours, direct)
    ref = _meta_embeddings(model, state, folder)
    if registers:
        _compare(ours, ref)
    else:
        assert float((ours * ref).sum(1).min()) < 0.999  # measured 1 - 0.0325
        assert (~(top_k(ours)[0] == top_k(ref)[0]).all(axis=1)).sum() >= 20  # measured 29 of 30 lists change


def test_full_size_vits14_matches_meta(tmp_path):
    """The released ViT-S/14 shape (384 wide, 12 blocks, 6 heads) at 224 px, 4 slices."""
    model, state = meta_backbone(1, width=384, depth=12, perturb=0.05)
    torch.save(state, tmp_path / "dinov2_vits14_pretrain.pth")
    emb = build_embedder(str(tmp_path / "dinov2_vits14_pretrain.pth"), image_size=224)
    assert (emb.model.config.num_attention_heads, emb.model.config.num_hidden_layers) == (6, 12)
    x = SLICES[::8]
    with torch.no_grad():
        ref = F.normalize(meta_features(model, emb.preprocess(x))[0], dim=-1).numpy()
    ours = emb.embed(x)
    assert float((ours * ref).sum(1).min()) >= COS_MIN
    assert float(np.abs(ours - ref).max()) <= D_TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("height", "width"), [(224, 224), (224, 280), (518, 518), (140, 518), (532, 532)])
def test_position_resampling_is_metas_bit_for_bit(height, width, dtype):
    """``meta_pos_encoding`` against Meta's ``interpolate_pos_encoding`` itself: square and
    non-square inputs, the native grid (returned unchanged) and bf16 tokens (resampled in fp32)."""
    from ragsam.models.dinov2_pos import META_PLAIN, meta_pos_encoding

    model, _ = meta_backbone(0, depth=1)
    tokens = torch.zeros(1, 1 + (height // 14) * (width // 14), 128, dtype=dtype)
    with torch.no_grad():
        expected = model.interpolate_pos_encoding(tokens, height, width)
        ours = meta_pos_encoding(model.pos_embed, height, width, 14, META_PLAIN["offset"], META_PLAIN["antialias"],
                                 dtype)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    assert torch.equal(ours, expected)
    if (height, width) == (518, 518):
        assert ours is model.pos_embed


@pytest.mark.parametrize(("tag", "builder", "ffn"), [("vits14", "vit_small", "mlp"), ("vitb14", "vit_base", "mlp"),
                                                     ("vitl14", "vit_large", "mlp"),
                                                     ("vitg14", "vit_giant2", "swiglufused")])
def test_verified_layout_is_metas_state_dict(tag, builder, ffn):
    """What ``weights verify`` expects of a released file is exactly the state dict of Meta's model
    as ``dinov2/hub/backbones.py`` builds it (518 px, patch 14, layer scale, no chunks; SwiGLU for
    ViT-g), names and shapes, built on the meta device; the ``_reg4`` files add ``register_tokens``."""
    from dinov2.models import vision_transformer as meta_vits

    from ragsam.models.convert_dinov2 import official_shapes, variant_config

    with torch.device("meta"):  # drop_path_uniform: Meta's linspace(...).item() cannot run on meta tensors
        model = getattr(meta_vits, builder)(patch_size=14, img_size=518, init_values=1.0, block_chunks=0,
                                            ffn_layer=ffn, drop_path_uniform=True)
    meta = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert official_shapes(variant_config(tag)) == meta
    width = meta["cls_token"][-1]
    assert official_shapes(variant_config(f"{tag}_reg4")) == {**meta, "register_tokens": (1, 4, width)}
