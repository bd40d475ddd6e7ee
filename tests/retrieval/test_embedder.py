"""DINOv2 slice embedder: preprocessing values, pooling, determinism, weight loading paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

from ragsam.errors import InputError
from ragsam.models.convert_dinov2 import hf_to_official, official_to_hf
from ragsam.retrieval.embedder import IMAGENET_MEAN, IMAGENET_STD, build_embedder, identity_mismatch


def _images(n: int = 4, size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def test_preprocess_hand_computed_values():
    emb = build_embedder("tiny", image_size=28)
    x = np.full((1, 1, 28, 28), 0.5, np.float32)  # same size: no resampling, channel repeated
    out = emb.preprocess(x)
    assert out.shape == (1, 3, 28, 28)
    for c in range(3):
        expected = (0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]  # e.g. (0.5 - 0.485) / 0.229 = 0.0655
        assert torch.allclose(out[0, c], torch.full((28, 28), expected), atol=1e-6)


def test_embeddings_unit_norm_deterministic_and_batch_independent():
    torch.manual_seed(0)
    x = _images(5)
    a = build_embedder("tiny", image_size=28).embed(x, batch_size=5)
    b = build_embedder("tiny", image_size=28).embed(x, batch_size=2)
    assert a.shape == (5, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a[0], a[1])  # different slices, different vectors
    # the global RNG is not consumed by the seeded initialisation
    state = torch.get_rng_state()
    build_embedder("tiny")
    assert torch.equal(state, torch.get_rng_state())


def test_pooling_matches_the_model_outputs():
    x = _images(3, size=28)
    for pooling in ("cls", "mean"):
        emb = build_embedder("tiny", pooling=pooling, image_size=28)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            hidden = emb.model(pixel_values=(torch.from_numpy(x) - mean) / std).last_hidden_state
        vec = hidden[:, 0] if pooling == "cls" else hidden[:, 1:].mean(1)
        np.testing.assert_allclose(emb.embed(x), F.normalize(vec, dim=-1).numpy(), atol=1e-6)


def test_single_channel_equals_repeated_rgb_and_resize_path():
    emb = build_embedder("tiny", image_size=28)
    gray = np.random.default_rng(1).random((2, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(emb.embed(gray), emb.embed(np.repeat(gray[:, None], 3, axis=1)), atol=1e-6)


def test_bad_inputs_are_refused():
    emb = build_embedder("tiny", image_size=28)
    with pytest.raises(InputError, match=r"\[0, 1\].*-1000"):
        emb.embed(np.full((1, 3, 28, 28), -1000.0, np.float32))  # HU instead of [0, 1]
    with pytest.raises(InputError, match="shape"):
        emb.embed(np.zeros((1, 2, 28, 28), np.float32))
    with pytest.raises(InputError, match="multiple of the patch size 14"):
        build_embedder("tiny", image_size=30)
    with pytest.raises(InputError, match="pooling 'max'"):
        build_embedder("tiny", pooling="max")
    with pytest.raises(InputError, match="no such DINOv2 weights"):
        build_embedder("not-a-model")


def test_identity_and_mismatch_message():
    a = build_embedder("tiny", image_size=28)
    ident = a.identity
    assert ident["dim"] == 32 and ident["pooling"] == "cls" and ident["image_size"] == 28
    assert identity_mismatch(ident, build_embedder("tiny", image_size=28).identity) is None
    other = build_embedder("tiny", image_size=28, seed=1).identity
    msg = identity_mismatch(ident, other)
    assert msg is not None and "weights_sha256" in msg and ident["weights_sha256"][:12] in msg
    assert "pooling 'cls' vs 'mean'" in identity_mismatch(ident, build_embedder("tiny", "mean", 28).identity)


def test_hf_save_pretrained_folder_loads_through_same_path(tmp_path):
    tiny = build_embedder("tiny", image_size=28)
    tiny.model.save_pretrained(tmp_path / "dino")
    loaded = build_embedder(str(tmp_path / "dino"), image_size=28)
    assert loaded.identity["weights_sha256"] == tiny.identity["weights_sha256"]
    assert identity_mismatch(tiny.identity, loaded.identity) is None
    x = _images(2)
    np.testing.assert_array_equal(loaded.embed(x), tiny.embed(x))


def test_hf_folder_with_a_missing_tensor_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny = build_embedder("tiny", image_size=28)
    tiny.model.save_pretrained(tmp_path / "dino")
    files = list((tmp_path / "dino").glob("*.safetensors"))
    state = load_file(files[0])
    state.pop(next(k for k in state if "fc1.weight" in k))
    save_file(state, files[0], metadata={"format": "pt"})
    with pytest.raises(InputError, match="missing"):
        build_embedder(str(tmp_path / "dino"))


def _random_model(swiglu: bool = False) -> Dinov2Model:
    """Hidden 128 (2 heads of 64, as official models), 2 layers, native 28 px, all tensors random."""
    config = Dinov2Config(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4,
                          patch_size=14, image_size=28, layer_norm_eps=1e-6, use_swiglu_ffn=swiglu)
    torch.manual_seed(3)
    model = Dinov2Model(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # large values so a swapped q/k or gate/up changes the output
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def _official_forward(sd: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """The official DinoVisionTransformer forward, written from its module structure (no interpolation)."""
    w = sd["patch_embed.proj.weight"]
    t = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], dim=1) + sd["pos_embed"]
    dim = t.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        b, n, _ = h.shape
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        att = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        o = F.linear((att @ v).transpose(1, 2).reshape(b, n, dim), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        t = t + sd[p + "ls1.gamma"] * o
        h = F.layer_norm(t, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        if p + "mlp.w12.weight" in sd:
            x1, x2 = F.linear(h, sd[p + "mlp.w12.weight"], sd[p + "mlp.w12.bias"]).chunk(2, dim=-1)
            m = F.linear(F.silu(x1) * x2, sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"])
        else:
            m = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                         sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        t = t + sd[p + "ls2.gamma"] * m
    return F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


@pytest.mark.parametrize("swiglu", [False, True])
def test_official_pth_round_trip_and_reference_forward(tmp_path, swiglu):
    model = _random_model(swiglu)
    official = hf_to_official(model.state_dict())
    assert "blocks.1.attn.qkv.weight" in official and official["blocks.1.attn.qkv.weight"].shape == (384, 128)
    assert ("blocks.0.mlp.w12.weight" in official) == swiglu
    torch.save(official, tmp_path / "dinov2_test_pretrain.pth")

    from_pth = build_embedder(str(tmp_path / "dinov2_test_pretrain.pth"), image_size=28)
    direct = _embedder_of(model)
    x = _images(3, size=28)
    np.testing.assert_array_equal(from_pth.embed(x), direct.embed(x))
    assert from_pth.identity["weights_sha256"] == direct.identity["weights_sha256"]

    # independent check of the key semantics (qkv row order, head split, gate/up order)
    pixels = direct.preprocess(x)
    with torch.no_grad():
        ours = from_pth.model(pixel_values=pixels).last_hidden_state
        reference = _official_forward(official, pixels, heads=2)
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=2e-4)


def _embedder_of(model: Dinov2Model):
    from ragsam.retrieval.embedder import SliceEmbedder

    return SliceEmbedder(model, "in-memory", image_size=28)


def test_training_checkpoint_wrappers_and_chunked_blocks(tmp_path):
    model = _random_model()
    official = hf_to_official(model.state_dict())
    chunked = {(f"blocks.{int(k.split('.')[1]) // 1}.{k[len('blocks.'):]}" if k.startswith("blocks.") else k): v
               for k, v in official.items()}  # blocks.<chunk>.<N>.… with one block per chunk
    wrapped = {"teacher": {**{f"backbone.{k}": v for k, v in chunked.items()},
                           "dino_head.mlp.0.weight": torch.zeros(2, 2)}}
    torch.save(wrapped, tmp_path / "train.pth")
    x = _images(2, size=28)
    np.testing.assert_array_equal(build_embedder(str(tmp_path / "train.pth"), image_size=28).embed(x),
                                  _embedder_of(model).embed(x))


def test_official_refusals(tmp_path):
    official = hf_to_official(_random_model().state_dict())
    torch.save({**official, "register_tokens": torch.zeros(1, 4, 64)}, tmp_path / "reg.pth")
    with pytest.raises(InputError, match=r"register_tokens has shape \(1, 4, 64\), expected \(1, R, 128\)"):
        build_embedder(str(tmp_path / "reg.pth"))
    torch.save({**official, "head.weight": torch.zeros(2, 128)}, tmp_path / "extra.pth")
    with pytest.raises(InputError, match="unexpected tensor 'head.weight'"):
        build_embedder(str(tmp_path / "extra.pth"))
    torch.save({"weights": official, "note": object()}, tmp_path / "pickle.pth")  # needs full unpickling
    with pytest.raises(InputError, match="weights-only"):
        build_embedder(str(tmp_path / "pickle.pth"))
    with pytest.raises(InputError, match="does not exist"):
        build_embedder(str(tmp_path / "absent.pth"))
    assert set(official_to_hf(official)) == set(_random_model().state_dict())


def test_identity_names_the_position_interpolation(tmp_path):
    """Banks written before the rule was recorded used transformers' rule; a .pth uses Meta's."""
    tiny = build_embedder("tiny", image_size=28)
    assert tiny.identity["pos_interpolation"] == "transformers"
    old = {k: v for k, v in tiny.identity.items() if k != "pos_interpolation"}
    assert identity_mismatch(old, tiny.identity) is None
    model = _random_model()
    torch.save(hf_to_official(model.state_dict()), tmp_path / "w.pth")
    meta = build_embedder(str(tmp_path / "w.pth"), image_size=28)
    assert meta.identity["pos_interpolation"] == "meta offset=0.1 antialias=False"
    plain = _embedder_of(model)
    assert meta.identity["weights_sha256"] == plain.identity["weights_sha256"]
    assert "pos_interpolation 'transformers' vs 'meta offset=0.1 antialias=False'" in \
        identity_mismatch(plain.identity, meta.identity)
