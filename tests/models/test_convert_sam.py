"""Parity with Meta's official SAM and the .pth -> Hugging Face conversion."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ragsam.models import build_sam_model
from ragsam.models.convert_sam import convert_meta_key, convert_meta_state_dict
from ragsam.models.export import convert_checkpoint
from ragsam.models.registry import ARCHITECTURES, sam_config
from ragsam.models.sam import MultiOrganSam


def _official_outputs(sam, images01, coords=None, labels=None):
    """Embeddings and all-token low-res masks from the official modules (images in [0, 1])."""
    with torch.no_grad():
        x = sam.preprocess(images01 * 255.0)
        emb = sam.image_encoder(x)
        outs = []
        for b in range(len(images01)):  # Meta's decoder takes one image with its prompts at a time
            points = None if coords is None else (coords[b:b + 1], labels[b:b + 1])
            sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
            outs.append(sam.mask_decoder.predict_masks(emb[b:b + 1], sam.prompt_encoder.get_dense_pe(),
                                                       sparse, dense))
    return emb, torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def test_parity_with_official_sam(official_sam, meta_checkpoint):
    model = build_sam_model("tiny", str(meta_checkpoint), num_classes=3, image_size=128).eval()
    assert model.load_report.resized == [] and model.load_report.new == []
    torch.manual_seed(1)
    images = torch.rand(2, 3, 128, 128)
    emb, masks, iou = _official_outputs(official_sam, images)
    with torch.no_grad():
        ours_emb = model.encode(images)
        ours_masks, ours_iou = model.decode(ours_emb)
        logits = model(images)
    assert emb.abs().mean() > 0.05 and masks.abs().mean() > 0.01  # a non-degenerate comparison
    torch.testing.assert_close(ours_emb, emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_masks, masks, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_iou, iou, atol=1e-5, rtol=1e-5)
    # the full-size logits are the official postprocessing (bilinear to the input size)
    up = torch.nn.functional.interpolate(masks, (128, 128), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, up, atol=1e-5, rtol=1e-5)
    # with a positive and a negative point prompt
    coords = torch.tensor([[[30.0, 40.0], [100.0, 90.0]], [[64.0, 10.0], [5.0, 120.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    _, pmasks, piou = _official_outputs(official_sam, images, coords, labels)
    with torch.no_grad():
        ours_p, ours_piou = model.decode(ours_emb, coords, labels)
    assert (pmasks - masks).abs().max() > 1e-3  # the prompt changes the masks
    torch.testing.assert_close(ours_p, pmasks, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_piou, piou, atol=1e-5, rtol=1e-5)


def test_every_official_key_maps_onto_the_transformers_model(official_sam):
    converted = convert_meta_state_dict(official_sam.state_dict(), "sam.pth")
    hf_keys = set(MultiOrganSam(sam_config(ARCHITECTURES["tiny"])).state_dict())
    assert set(converted) == hf_keys
    assert convert_meta_key("mask_decoder.iou_prediction_head.layers.2.bias") == \
        "mask_decoder.iou_prediction_head.proj_out.bias"
    assert convert_meta_key("image_encoder.neck.3.weight") == "vision_encoder.neck.layer_norm2.weight"
    assert convert_meta_key("image_encoder.blocks.11.attn.rel_pos_h") == "vision_encoder.layers.11.attn.rel_pos_h"
    assert convert_meta_key("mask_decoder.transformer.layers.1.norm4.bias") == \
        "mask_decoder.transformer.layers.1.layer_norm4.bias"
    assert convert_meta_key("something.else") is None


def test_convert_writes_a_loadable_hf_folder(official_sam, meta_checkpoint, tmp_path):
    out = convert_checkpoint(meta_checkpoint, tmp_path / "sam-tiny-hf")
    assert (out / "config.json").is_file()
    stored = load_file(str(out / "model.safetensors"))
    torch.testing.assert_close(stored["vision_encoder.layers.1.attn.qkv.weight"],
                               official_sam.image_encoder.blocks[1].attn.qkv.weight, atol=0, rtol=0)
    from_pth = build_sam_model("tiny", str(meta_checkpoint), num_classes=3, image_size=128).eval()
    from_dir = build_sam_model("tiny", str(out), num_classes=3, image_size=128).eval()
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(from_pth(images), from_dir(images))


def test_weights_verify_checks_every_tensor_of_metas_sam(official_sam_layout, tmp_path, monkeypatch):
    """``weights verify`` on files with the names and shapes of Meta's ViT-B / ViT-L state dicts
    (0-stride views: a few bytes each); the checksum prefix is set to the file's own."""
    import hashlib

    from ragsam.errors import InputError
    from ragsam.hub.verify import verify_weights
    from ragsam.models import presets

    def write(arch: str, drop: str | None = None):
        state = {k: torch.zeros(()).expand(s) for k, s in official_sam_layout(arch).items() if k != drop}
        path = tmp_path / f"{arch}.pth"
        torch.save(state, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:6]
        monkeypatch.setitem(presets.PRESETS, "sam-vit-b", presets.WeightPreset(
            **{**presets.get_preset("sam-vit-b").__dict__, "sha256_prefix": digest}))
        return path, digest

    path, digest = write("sam_vit_b")
    assert verify_weights(path, "sam-vit-b") == [f"SHA-256 starts with {digest}",
                                                 "all 315 tensors of sam-vit-b present with their shapes"]
    path, _ = write("sam_vit_l")
    with pytest.raises(InputError, match=r"sam_vit_l.pth: not sam-vit-b but sam-vit-l \("):
        verify_weights(path, "sam-vit-b")
    path, _ = write("sam_vit_b", drop="mask_decoder.iou_prediction_head.layers.2.bias")
    with pytest.raises(InputError, match=r"incomplete sam-vit-b checkpoint: 1 of its 315 tensors are missing "
                                         r"\(mask_decoder.iou_prediction_head.proj_out.bias\)"):
        verify_weights(path, "sam-vit-b")
