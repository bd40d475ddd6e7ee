"""The prompt-free multi-organ model: normalisation, K + 1 outputs, labels, HF folder round trip."""

from __future__ import annotations

import pytest
import torch
from transformers import SamModel

from ragsam.errors import InputError, OutputExistsError
from ragsam.models import build_sam_model
from ragsam.models.export import save_hf_folder


@pytest.fixture()
def tiny5():
    torch.manual_seed(0)
    return build_sam_model("tiny", "random", num_classes=5, image_size=64).eval()


def test_normalisation_uses_sam_pixel_statistics(tiny5):
    images = torch.zeros(1, 3, 64, 64)
    images[:, :, 0, 0] = 1.0
    out = tiny5.normalize(images)
    # 0 -> -mean / std ; 1 -> (255 - mean) / std, per channel
    torch.testing.assert_close(out[0, :, 1, 1], torch.tensor([-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375]))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([131.325 / 58.395, 138.72 / 57.12, 151.47 / 57.375]))


def test_outputs_k_plus_one_channels_and_argmax_labels(tiny5):
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logits = tiny5(images)
        low, iou = tiny5.decode(tiny5.encode(images))
    assert logits.shape == (2, 6, 64, 64) and low.shape == (2, 6, 16, 16) and iou.shape == (2, 6)
    labels = tiny5.predict_labels(images)
    assert labels.dtype == torch.int64 and torch.equal(labels, logits.argmax(1))


def test_training_goes_through_the_components(tiny5):
    tiny5.train()
    tiny5(torch.rand(1, 3, 64, 64)).sum().backward()
    assert tiny5.mask_decoder.mask_tokens.weight.grad is not None
    assert tiny5.vision_encoder.patch_embed.projection.weight.grad.abs().sum() > 0


def test_wrong_image_shape_is_refused(tiny5):
    with pytest.raises(InputError, match=r"images must have shape \(B, 3, 64, 64\), got \(1, 3, 128, 128\)"):
        tiny5(torch.rand(1, 3, 128, 128))


def test_hf_save_pretrained_folder_round_trip(tiny5, tmp_path):
    out = save_hf_folder(tiny5, tmp_path / "hf")
    assert SamModel.from_pretrained(str(out)).config.mask_decoder_config.num_multimask_outputs == 5
    again = build_sam_model("tiny", str(out), num_classes=5, image_size=64).eval()
    assert again.load_report.resized == [] and again.load_report.new == []
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(images), tiny5(images))
    with pytest.raises(OutputExistsError):
        save_hf_folder(tiny5, out)
    save_hf_folder(tiny5, out, force=True)


def _encoder_input(model, images):
    seen = {}

    def grab(_module, args, kwargs):
        seen["x"] = (kwargs.get("pixel_values") if "pixel_values" in kwargs else args[0]).detach().clone()

    handle = model.vision_encoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return seen["x"]


@pytest.mark.parametrize("normalize", ["none", "sam"])
def test_encoder_receives_the_slice_or_sams_normalisation(normalize):
    from ragsam.models import build_model
    from ragsam.models.config import ModelConfig
    from ragsam.peft.config import PeftConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="tiny", num_classes=2, image_size=64, normalize=normalize,
                                    peft=PeftConfig(method="none"))).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fed = _encoder_input(model, images)
    if normalize == "none":  # SAMed: pixel mean 0, std 1 - the [0, 1] slice itself
        assert torch.equal(fed, images)
    else:
        mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
        std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
        torch.testing.assert_close(fed, (images * 255 - mean) / std)


def test_forward_without_upsampling_is_the_decoders_quarter_resolution(tiny5):
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        low = tiny5(images, upsample=False)
        assert low.shape == (2, 6, 16, 16)
        assert torch.equal(low, tiny5.low_res_logits(images))
        assert torch.equal(tiny5(images), tiny5.upsample(low))


def test_unknown_normalisation_is_refused():
    with pytest.raises(InputError, match="normalize 'imagenet' is not one of sam, none"):
        build_sam_model("tiny", "random", num_classes=2, image_size=64, normalize="imagenet")
