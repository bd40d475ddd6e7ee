"""Weight presets: names resolve, local copies are checked, offline pull fails in one line."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from ragsam.cli.main import run_cli
from ragsam.errors import InputError
from ragsam.hub.verify import sha256_of, verify_weights
from ragsam.models import presets
from ragsam.models.presets import PRESETS, get_preset, resolve_weights


def test_meta_file_names_give_the_sha_prefix():
    assert get_preset("sam-vit-b").sha256_prefix == "01ec64"
    assert get_preset("sam-vit-h").official_url.endswith("sam_vit_h_4b8939.pth")
    assert resolve_weights("sam-vit-b") == "facebook/sam-vit-base"
    assert resolve_weights("some/other-id") == "some/other-id"
    with pytest.raises(InputError, match="unknown weights preset 'sam-vit-x'"):
        get_preset("sam-vit-x")


def _hf_folder(tmp_path, hidden: int):
    folder = tmp_path / f"sam{hidden}"
    folder.mkdir()
    config = {"model_type": "sam", "vision_config": {"hidden_size": hidden, "num_hidden_layers": 12}}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    return folder


def test_verify_folder_checks_config_facts(tmp_path):
    # Right config, but one tensor: every expected tensor is checked, not only the config.
    good_config = _hf_folder(tmp_path, 768)
    with pytest.raises(InputError, match=r"not a SAM checkpoint \(no image-encoder patch embedding among 1 keys"):
        verify_weights(good_config, "sam-vit-b")
    bad = _hf_folder(tmp_path, 64)
    with pytest.raises(InputError, match="vision_config.hidden_size is 64, sam-vit-b has 768"):
        verify_weights(bad, "sam-vit-b")


def test_verify_official_file_checks_hash_prefix_and_key(tmp_path, monkeypatch):
    path = tmp_path / "sam_vit_b_test.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_of(path) == digest
    preset = presets.WeightPreset(**{**get_preset("sam-vit-b").__dict__, "sha256_prefix": digest[:6]})
    monkeypatch.setitem(PRESETS, "sam-vit-b", preset)
    # the checksum passes, then every tensor of SAM ViT-B is checked (the full layout: tests/models)
    with pytest.raises(InputError, match=r"sam_vit_b_test.pth: incomplete sam-vit-b checkpoint: 314 of its 315 "
                                         r"tensors are missing"):
        verify_weights(path, "sam-vit-b")
    other = "0" * 6 if not digest.startswith("000000") else "ffffff"
    monkeypatch.setitem(PRESETS, "sam-vit-b", presets.WeightPreset(**{**preset.__dict__, "sha256_prefix": other}))
    with pytest.raises(InputError, match="corrupt or another file"):
        verify_weights(path, "sam-vit-b")


def test_verify_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(InputError, match="refusing to unpickle"):
        verify_weights(path, "dinov2-small")


def test_cli_pull_offline_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_cli(["weights", "pull", "sam-vit-b", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "facebook/sam-vit-base" in err[0] and "sam_vit_b_01ec64.pth" in err[0]


def test_cli_list_and_verify(capsys, tmp_path):
    assert run_cli(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "sam2.1-tiny" in out and "dinov2-base" in out
    folder = _hf_folder(tmp_path, 768)  # right config, one tensor: refused (every tensor is checked)
    assert run_cli(["weights", "verify", str(folder), "sam-vit-b"]) == 2
    assert "not a SAM checkpoint" in capsys.readouterr().err
    assert run_cli(["weights", "verify", str(tmp_path / "missing"), "sam-vit-b"]) == 2
