"""Strict loading: decoder token reuse rule and every bad checkpoint."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from ragsam.errors import InputError
from ragsam.models import build_sam_model


def test_pretrained_tokens_fill_the_first_slots_and_new_ones_are_listed(official_sam, meta_checkpoint):
    torch.manual_seed(0)
    model = build_sam_model("tiny", str(meta_checkpoint), num_classes=5, image_size=128)
    dec, ref = model.mask_decoder, official_sam.mask_decoder
    assert torch.equal(dec.mask_tokens.weight[:4], ref.mask_tokens.weight)
    assert torch.equal(dec.output_hypernetworks_mlps[3].proj_out.weight, ref.output_hypernetworks_mlps[3].layers[2].weight)
    assert torch.equal(dec.iou_prediction_head.proj_out.weight[:4], ref.iou_prediction_head.layers[2].weight)
    assert torch.equal(dec.iou_prediction_head.proj_in.weight, ref.iou_prediction_head.layers[0].weight)
    report = model.load_report
    assert [n.split(" (")[0] for n in report.new] == ["mask token 4", "mask token 5"]
    assert report.dropped == [] and report.reused_tokens == ["0..3"]
    assert not torch.equal(dec.output_hypernetworks_mlps[4].proj_in.weight, dec.output_hypernetworks_mlps[0].proj_in.weight)

    one = build_sam_model("tiny", str(meta_checkpoint), num_classes=1, image_size=128)
    assert torch.equal(one.mask_decoder.mask_tokens.weight, ref.mask_tokens.weight[:2])
    assert len(one.mask_decoder.output_hypernetworks_mlps) == 2
    assert sorted({k.split(".")[2] for k in one.load_report.dropped}) == ["2", "3"]


def test_another_architecture_says_what_it_looks_like(meta_checkpoint):
    with pytest.raises(InputError, match="does not fit architecture 'sam_vit_b': it looks like tiny"):
        build_sam_model("sam_vit_b", str(meta_checkpoint), num_classes=3)


def test_missing_and_unexpected_keys_are_named(official_sam, tmp_path):
    state = dict(official_sam.state_dict())
    del state["mask_decoder.transformer.layers.0.norm2.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(InputError, match=r"missing.pth: 1 model weights missing.*layers\.0\.layer_norm2\.weight"):
        build_sam_model("tiny", str(tmp_path / "missing.pth"), num_classes=3, image_size=128)
    state = dict(official_sam.state_dict())
    state["image_encoder.blocks.0.attn.extra"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(InputError, match=r"no counterpart: image_encoder\.blocks\.0\.attn\.extra"):
        build_sam_model("tiny", str(tmp_path / "extra.pth"), num_classes=3, image_size=128)


def test_wrong_shapes_are_refused(official_sam, tmp_path):
    state = {k: v.clone() for k, v in official_sam.state_dict().items()}
    state["mask_decoder.transformer.layers.0.mlp.lin1.weight"] = torch.zeros(3, 32)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError, match=r"bad.safetensors: 1 weights have the wrong shape.*lin1.weight \(3, 32\)"):
        build_sam_model("tiny", str(tmp_path / "bad.safetensors"), num_classes=3, image_size=128)


class _Payload:
    def __reduce__(self):
        return (print, ("this would run",))


def test_pickles_with_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"image_encoder.pos_embed": _Payload()}, protocol=2))
    with pytest.raises(InputError, match=r"evil.pth: refusing to unpickle: .*GLOBAL \S*print"):
        build_sam_model("tiny", str(path), num_classes=3, image_size=128)


def test_corrupt_missing_and_foreign_files(tmp_path):
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match=r"corrupt.pth: not a readable PyTorch checkpoint"):
        build_sam_model("tiny", str(tmp_path / "corrupt.pth"), num_classes=3)
    (tmp_path / "cut.pth").write_bytes(b"\x80\x02}q\x00")
    with pytest.raises(InputError, match=r"cut.pth: not a readable PyTorch checkpoint \(the file is truncated\)"):
        build_sam_model("tiny", str(tmp_path / "cut.pth"), num_classes=3)
    (tmp_path / "text.pth").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"text.pth: not a readable PyTorch checkpoint \(neither a zip"):
        build_sam_model("tiny", str(tmp_path / "text.pth"), num_classes=3)
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match=r"corrupt.safetensors: not a readable safetensors file"):
        build_sam_model("tiny", str(tmp_path / "corrupt.safetensors"), num_classes=3)
    with pytest.raises(InputError, match=r"nope.pth: weights file or folder does not exist"):
        build_sam_model("tiny", str(tmp_path / "nope.pth"), num_classes=3)
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match=r"other.pth: not a SAM checkpoint"):
        build_sam_model("tiny", str(tmp_path / "other.pth"), num_classes=3)
    (tmp_path / "dino").mkdir()
    (tmp_path / "dino" / "config.json").write_text('{"model_type": "dinov2"}')
    with pytest.raises(InputError, match=r"not a SAM model folder \(config.json model_type 'dinov2'\)"):
        build_sam_model("tiny", str(tmp_path / "dino"), num_classes=3)
    with pytest.raises(InputError, match=r"unknown weights format '.npz'"):
        (tmp_path / "w.npz").write_bytes(b"x")
        build_sam_model("tiny", str(tmp_path / "w.npz"), num_classes=3)


def test_fresh_heads_start_from_pytorch_default_init_and_keep_the_rest(official_sam, meta_checkpoint):
    torch.manual_seed(0)
    model = build_sam_model("tiny", str(meta_checkpoint), num_classes=5, image_size=128, head_init="fresh")
    dec, ref = model.mask_decoder, official_sam.mask_decoder
    # SAMed's load_from skips mask_tokens / output_hypernetworks_mlps / iou_prediction_head ...
    assert not torch.equal(dec.mask_tokens.weight[:4], ref.mask_tokens.weight)
    assert not torch.equal(dec.iou_prediction_head.proj_in.weight, ref.iou_prediction_head.layers[0].weight)
    # ... and loads everything else, the IoU token included.
    assert torch.equal(dec.iou_token.weight, ref.iou_token.weight)
    assert torch.equal(dec.upscale_conv1.weight, ref.output_upscaling[0].weight)
    # nn.Embedding's default N(0, 1); nn.Linear's Kaiming-uniform (a = sqrt 5): |w|, |b| <= 1 / sqrt(fan_in),
    # i.e. a standard deviation of 1 / sqrt(3 fan_in) - not transformers' N(0, 0.02).
    assert 0.85 < dec.mask_tokens.weight.std().item() < 1.15
    linears = [m for m in [*dec.output_hypernetworks_mlps.modules(), *dec.iou_prediction_head.modules()]
               if isinstance(m, torch.nn.Linear)]
    for lin in linears:
        bound = lin.in_features ** -0.5
        assert lin.weight.abs().max().item() <= bound and lin.bias.abs().max().item() <= bound
    big = max(linears, key=lambda m: m.weight.numel())
    assert big.weight.std().item() == pytest.approx(big.in_features ** -0.5 / 3 ** 0.5, rel=0.15)
    report = model.load_report
    assert report.reused_tokens == [] and "all 6 mask tokens" in report.new[0]
    assert any(k.startswith("mask_decoder.mask_tokens.") for k in report.dropped)


def test_unknown_head_init_is_refused(meta_checkpoint):
    with pytest.raises(InputError, match="head_init 'samed' is not one of pretrained, fresh"):
        build_sam_model("tiny", str(meta_checkpoint), num_classes=2, image_size=128, head_init="samed")
