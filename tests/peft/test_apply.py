"""apply_peft on the tiny SAM: exact equivalence at init, trainable sets, save/load, merge."""

from __future__ import annotations

import copy

import pytest
import torch

from ragsam.errors import InputError
from ragsam.models import build_sam_model
from ragsam.peft import (
    apply_peft,
    count_parameters,
    load_trainable,
    merge_peft,
    save_trainable,
    trainable_state_dict,
)
from ragsam.peft.config import PeftConfig
from ragsam.peft.lora import LoRALinear


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return build_sam_model("tiny", "random", num_classes=3, image_size=64).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 64, 64)


def _peft(base, **kwargs):
    model = copy.deepcopy(base)
    apply_peft(model, PeftConfig(**kwargs))
    return model.eval()


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _randomise(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("kwargs", [
    {"method": "lora", "targets": ["q", "k", "v", "proj", "mlp"], "decoder": "lora"},
    {"method": "adapter", "decoder_adapters": True},
])
def test_peft_at_init_reproduces_the_base_model_exactly(base, images, kwargs):
    model = _peft(base, **kwargs)
    assert count_parameters(model)["peft"][1] > 0
    # PyTorch's CPU linear takes another (equally valid) kernel for a weight that does not
    # require grad (~1e-11 apart), so the reference gets the same frozen/trainable flags.
    reference = copy.deepcopy(base)
    flags = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        p.requires_grad_(flags[name].requires_grad)
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))
        torch.testing.assert_close(model(images), base(images), atol=1e-8, rtol=0)


def test_lora_full_decoder_trains_lora_and_the_decoder_only(base):
    model = _peft(base, method="lora")
    names = _trainable(model)
    lora = {n for n in names if ".lora_" in n}
    assert lora == {f"vision_encoder.layers.{i}.attn.qkv.lora_{m}.{s}" for i in range(4) for m in "ab" for s in "qv"}
    assert names - lora == {n for n, _ in base.named_parameters() if n.startswith("mask_decoder.")}


def test_lora_decoder_mode_is_samed_s(base):
    model = _peft(base, method="lora", decoder="lora", decoder_rank=2)
    names = _trainable(model)
    dec_lora = {n for n in names if n.startswith("mask_decoder.") and ".lora_" in n}
    # 2 layers x 3 attentions + the final attention, q and v each, A and B
    assert len(dec_lora) == 7 * 2 * 2
    assert "mask_decoder.transformer.layers.0.self_attn.q_proj.lora_a.w" in dec_lora
    head = {n for n in names if n.startswith("mask_decoder.") and ".lora_" not in n}
    assert head == {n for n, _ in base.named_parameters()
                    if n.startswith("mask_decoder.") and not n.startswith("mask_decoder.transformer.")}


def test_adapter_trainable_set_and_bottleneck(base):
    model = _peft(base, method="adapter", decoder="frozen", adapter_ratio=0.25)
    names = _trainable(model)
    assert all("_adapter." in n for n in names) and len(names) == 4 * 2 * 4  # blocks x adapters x (2 W + 2 b)
    assert tuple(model.vision_encoder.layers[0].attn_adapter.down.weight.shape) == (16, 64)  # 0.25 * 64


def test_full_fine_tuning_and_freeze_patterns(base):
    full = _peft(base, method="none")
    assert _trainable(full) == {n for n, _ in base.named_parameters()}
    frozen = _peft(base, method="none", freeze=[r"^vision_encoder\.layers\.[01]\.", "neck"])
    gone = _trainable(full) - _trainable(frozen)
    assert gone == {n for n, _ in base.named_parameters()
                    if n.startswith(("vision_encoder.layers.0.", "vision_encoder.layers.1.", "vision_encoder.neck."))}


def test_prompt_encoder_flag(base):
    names = _trainable(_peft(base, method="lora", train_prompt_encoder=True))
    assert "prompt_encoder.no_mask_embed.weight" in names and "shared_image_embedding.positional_embedding" in names


def test_positional_matrix_stays_frozen_as_in_meta_sam_when_asked(base, images, tmp_path):
    """SAMed trains the prompt encoder, but SAM's Gaussian matrix is a buffer there: it never trains."""
    model = _peft(base, method="lora", train_prompt_encoder=True, train_positional_embedding=False)
    names = _trainable(model)
    everything = _trainable(_peft(base, method="lora", train_prompt_encoder=True))
    assert everything - names == {"shared_image_embedding.positional_embedding"}
    # the tied copy the prompt encoder reads is the same tensor, frozen with it
    assert model.prompt_encoder.shared_embedding.positional_embedding is model.shared_image_embedding.positional_embedding
    assert "shared_image_embedding.positional_embedding" not in trainable_state_dict(model)
    # one optimiser step on a loss that reads it leaves it exactly where it was
    before = model.shared_image_embedding.positional_embedding.detach().clone()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    model.train()
    model(images).square().mean().backward()
    optimiser.step()
    assert torch.equal(model.shared_image_embedding.positional_embedding, before)
    # full fine-tuning honours it too
    full = _trainable(_peft(base, method="none", train_positional_embedding=False))
    assert {n for n, _ in base.named_parameters()} - full == {"shared_image_embedding.positional_embedding"}


def test_adapter_init_default_keeps_linear_init_and_draws_the_same_numbers(base, images):
    """Med-SA keeps nn.Linear's init for the up projection; "zero" only overwrites it (same RNG stream)."""
    torch.manual_seed(5)
    zero = _peft(base, method="adapter")
    torch.manual_seed(5)
    default = _peft(base, method="adapter", adapter_init="default")
    zero_up = zero.vision_encoder.layers[0].attn_adapter.up
    default_up = default.vision_encoder.layers[0].attn_adapter.up
    assert torch.count_nonzero(zero_up.weight) == 0 and torch.count_nonzero(zero_up.bias) == 0
    bound = 1 / default_up.in_features ** 0.5  # nn.Linear: kaiming_uniform(a=sqrt 5) = U(-1/sqrt(in), 1/sqrt(in))
    assert 0 < default_up.weight.abs().max() <= bound and 0 < default_up.bias.abs().max() <= bound
    for layer_z, layer_d in zip(zero.vision_encoder.layers, default.vision_encoder.layers, strict=True):
        for name in ("attn_adapter", "mlp_adapter"):
            assert torch.equal(getattr(layer_z, name).down.weight, getattr(layer_d, name).down.weight)
    with torch.no_grad():  # the zero start is SAM's image embedding; the default start is not
        reference = base.encode(images)
        torch.testing.assert_close(zero.encode(images), reference, atol=1e-6, rtol=0)
        assert (default.encode(images) - reference).norm() > 0.01 * reference.norm()


def test_save_load_trainable_reproduces_outputs_bit_for_bit(base, images, tmp_path):
    model = _peft(base, method="lora", decoder="lora")
    _randomise(model)
    path = save_trainable(model, tmp_path / "model.safetensors", {"arch": "tiny", "iteration": "7"})
    fresh = _peft(base, method="lora", decoder="lora")
    with torch.no_grad():
        assert not torch.equal(fresh(images), model(images))
    meta = load_trainable(fresh, path)
    assert meta == {"arch": "tiny", "iteration": "7"}
    assert set(trainable_state_dict(fresh)) == set(trainable_state_dict(model))
    with torch.no_grad():
        assert torch.equal(fresh(images), model(images))


def test_load_trainable_is_strict(base, tmp_path):
    lora = _peft(base, method="lora")
    path = save_trainable(lora, tmp_path / "lora.safetensors")
    adapter = _peft(base, method="adapter")
    with pytest.raises(InputError, match=r"lora.safetensors: \d+ trainable tensors missing from the checkpoint: "
                                         r".*attn_adapter"):
        load_trainable(adapter, path)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_trainable(lora, tmp_path / "junk.safetensors")


def test_merge_keeps_outputs_and_restores_base_names(base, images):
    model = _peft(base, method="lora", targets=["q", "v", "proj"], decoder="lora", alpha=8.0)
    _randomise(model)
    with torch.no_grad():
        expected = model(images)
        merge_peft(model)
        merged = model(images)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(base.state_dict())
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "prefix"}, "peft.method 'prefix' is not one of lora, adapter, none"),
    ({"decoder": "half"}, "peft.decoder 'half' is not one of full, lora, frozen"),
    ({"targets": ["q", "o"]}, r"peft.targets \['q', 'o'\] must be a non-empty subset"),
    ({"rank": 0}, "peft.rank must be at least 1, got 0"),
    ({"decoder_rank": 0}, "peft.decoder_rank must be at least 1, got 0"),
    ({"method": "adapter", "adapter_init": "kaiming"}, "peft.adapter_init 'kaiming' is not one of zero, default"),
    ({"freeze": ["("]}, "peft.freeze pattern '\\(' is not a regular expression"),
])
def test_bad_settings_are_refused(base, kwargs, message):
    with pytest.raises(InputError, match=message):
        apply_peft(copy.deepcopy(base), PeftConfig(**kwargs))
