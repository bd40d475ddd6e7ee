"""The promptable SAM of the baselines: strict loading through the users' weight readers, devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import SamModel

from ragsam.errors import InputError
from ragsam.models.load_report import LoadReport
from ragsam.models.promptable_sam import load_prompt_sam
from ragsam.models.registry import get_arch, sam_config


def test_random_weights_are_seeded_and_restore_the_global_generator() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, report = load_prompt_sam("tiny", "random", seed=0)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's generator is untouched
    b, _ = load_prompt_sam("tiny", "random", seed=0)
    c, _ = load_prompt_sam("tiny", "random", seed=1)
    key = "mask_decoder.output_hypernetworks_mlps.1.proj_in.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])
    assert report == LoadReport(source="random", arch="tiny", image_size=128)
    assert a.mask_decoder.num_mask_tokens == 4 and not a.training


def test_hugging_face_folder_round_trip(tmp_path: Path) -> None:
    model, _ = load_prompt_sam("tiny", "random", seed=3)
    model.save_pretrained(tmp_path / "sam-tiny")
    loaded, report = load_prompt_sam("tiny", str(tmp_path / "sam-tiny"))
    assert report.resized == []
    reference = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, reference[key]), key
    small, report = load_prompt_sam("tiny", str(tmp_path / "sam-tiny"), image_size=64)
    assert small.config.vision_config.image_size == 64 and "vision_encoder.pos_embed" in report.resized
    assert small.get_image_embeddings(torch.zeros(1, 3, 64, 64)).shape == (1, 32, 4, 4)


def test_checkpoints_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    model, _ = load_prompt_sam("tiny", "random")
    model.save_pretrained(tmp_path / "tiny")
    with pytest.raises(InputError, match="does not fit architecture 'sam_vit_b': it looks like tiny "
                                         r"\(use --arch tiny\)"):
        load_prompt_sam("sam_vit_b", str(tmp_path / "tiny"))
    # a multi-organ decoder (6 mask tokens) is not SAM's promptable head
    SamModel(sam_config(get_arch("tiny"), 128, num_mask_tokens=6)).save_pretrained(tmp_path / "multi")
    with pytest.raises(InputError, match="has 6 mask tokens: a multi-organ"):
        load_prompt_sam("tiny", str(tmp_path / "multi"))
    with pytest.raises(InputError, match="unknown architecture 'vit_q'"):
        load_prompt_sam("vit_q", "random")
