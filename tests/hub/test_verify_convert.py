"""``ragsam weights verify`` / ``convert`` for SAM 2 and DINOv2 official checkpoints.

Files with the released names and shapes are written cheaply: every tensor is a
0-stride view of one zero (``torch.save`` stores one element), so a full-size
``sam2.1_hiera_tiny.pt`` or ``dinov2_vits14_pretrain.pth`` layout costs bytes. The
expected layouts come from the converters' rename rules; the tests check that the
right file passes, and that another size, a missing tensor, an extra tensor and a
truncated file are refused in one line (exit 2) with nothing written.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ragsam.cli.main import run_cli
from ragsam.errors import InputError
from ragsam.hub.convert import convert_weights, detect_family
from ragsam.hub.verify import verify_weights
from ragsam.models import convert_dinov2, convert_sam2
from ragsam.models.sam2 import build_sam2
from ragsam.retrieval.embedder import build_embedder


def _layout(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(()).expand(s) for k, s in shapes.items()}


def _dino_file(tmp_path, variant: str, drop: str | None = None, add: dict | None = None):
    state = _layout(convert_dinov2.official_shapes(convert_dinov2.variant_config(variant)))
    if drop:
        del state[drop]
    state.update(add or {})
    path = tmp_path / f"dinov2_{variant}_pretrain.pth"
    torch.save(state, path)
    return path


def test_dinov2_official_layouts_pass_and_other_sizes_are_named(tmp_path):
    small = _dino_file(tmp_path, "vits14")
    assert verify_weights(small, "dinov2-small") == [
        "all 175 tensors of dinov2-small present with their shapes",  # 5 + 12 blocks * 14 + 2 (norm)
        "no published checksum for dinov2-small (Meta publishes none for this file)"]
    reg = _dino_file(tmp_path, "vits14_reg4")
    assert verify_weights(reg, "dinov2-small-reg")[0] == "all 176 tensors of dinov2-small-reg present with their shapes"
    with pytest.raises(InputError, match=r"not dinov2-base but dinov2-small \(cls_token has shape \(1, 1, 384\), "
                                         r"dinov2-base has \(1, 1, 768\)\)"):
        verify_weights(small, "dinov2-base")
    with pytest.raises(InputError, match=r"not dinov2-small but dinov2-small-reg \(1 tensors are not dinov2-small "
                                         r"weights \(register_tokens\)\)"):
        verify_weights(reg, "dinov2-small")
    extra = _dino_file(tmp_path, "vits14", add={"head.weight": torch.zeros(2, 384)})
    with pytest.raises(InputError, match=r"not a dinov2-small checkpoint: 1 tensors are not dinov2-small weights "
                                         r"\(head.weight\)"):
        verify_weights(extra, "dinov2-small")
    (tmp_path / "m").mkdir()
    missing = _dino_file(tmp_path / "m", "vits14", drop="blocks.11.mlp.fc2.weight")
    with pytest.raises(InputError, match=r"dinov2_vits14_pretrain.pth: incomplete dinov2-small checkpoint: "
                                         r"1 of its 175 tensors are missing \(blocks.11.mlp.fc2.weight\)"):
        verify_weights(missing, "dinov2-small")


def test_sam2_official_layouts_pass_and_other_sizes_are_named(tmp_path):
    shapes = convert_sam2.official_shapes(convert_sam2.hiera_config("tiny"))
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": _layout(shapes)}, path)
    lines = verify_weights(path, "sam2.1-tiny")
    assert lines == [f"all {len(shapes)} tensors of sam2.1-tiny present with their shapes",
                     "no published checksum for sam2.1-tiny (Meta publishes none for this file)"]
    with pytest.raises(InputError, match=r"sam2.1_hiera_tiny.pt: not sam2.1-small but sam2.1-tiny \("):
        verify_weights(path, "sam2.1-small")
    no_21 = {k: v for k, v in _layout(shapes).items() if k != "no_obj_embed_spatial"}  # a SAM 2.0 file
    torch.save({"model": no_21}, path)
    with pytest.raises(InputError, match=r"incomplete sam2.1-tiny checkpoint: 1 of its \d+ tensors are missing "
                                         r"\(no_obj_embed_spatial\)"):
        verify_weights(path, "sam2.1-tiny")


def test_truncated_file_is_one_line_and_convert_writes_nothing(tmp_path, capsys):
    path = _dino_file(tmp_path, "vits14")
    state = torch.load(path, weights_only=True)
    state["pos_embed"] = torch.randn(1, 1370, 384)  # real bytes, so that truncation cuts tensor data
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        verify_weights(path, "dinov2-small")
    out = tmp_path / "out"
    assert run_cli(["weights", "convert", str(path), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "not a readable PyTorch checkpoint" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_cli_wrong_variant_is_one_line_exit_2_nothing_written(tmp_path, capsys):
    small = _dino_file(tmp_path, "vits14")
    assert run_cli(["weights", "verify", str(small), "dinov2-base"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dinov2_vits14_pretrain.pth" in err[0] and "not dinov2-base but dinov2-small" in err[0]
    out = tmp_path / "converted"
    assert run_cli(["weights", "convert", str(small), str(out), "--variant", "dinov2-base"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not dinov2-base but dinov2-small" in err[0]
    assert run_cli(["weights", "convert", str(small), str(out), "--variant", "sam2.1-tiny"]) == 2
    assert "a dinov2 checkpoint, not sam2.1-tiny (sam2)" in capsys.readouterr().err
    assert not out.exists()
    assert run_cli(["weights", "verify", str(small), "dinov2-small"]) == 0
    assert "matches dinov2-small" in capsys.readouterr().out


def _random_dino_pth(path, registers: int):
    config = convert_dinov2._config(128, 2, 2, 4, 14, 518, swiglu=False, registers=registers)
    torch.manual_seed(5)
    model = convert_dinov2.model_class(config)(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    torch.save(convert_dinov2.hf_to_official(model.state_dict()), path)


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_convert_keeps_meta_interpolation(tmp_path, registers, capsys):
    pth = tmp_path / "dino.pth"
    _random_dino_pth(pth, registers)
    assert detect_family(pth) == "dinov2"
    assert run_cli(["weights", "convert", str(pth), str(tmp_path / "hf")]) == 0
    assert "(dinov2)" in capsys.readouterr().out
    folder = build_embedder(str(tmp_path / "hf"), image_size=224)
    direct = build_embedder(str(pth), image_size=224)
    assert folder.identity["pos_interpolation"] == direct.identity["pos_interpolation"] != "transformers"
    assert folder.identity["weights_sha256"] == direct.identity["weights_sha256"]
    assert folder.model.config.model_type == ("dinov2_with_registers" if registers else "dinov2")
    x = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    np.testing.assert_array_equal(folder.embed(x), direct.embed(x))
    assert run_cli(["weights", "convert", str(pth), str(tmp_path / "hf")]) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err


def test_sam2_convert_round_trip(tmp_path, capsys):
    tiny, _ = build_sam2("tiny", seed=3)
    pt = tmp_path / "sam2_tiny_official.pt"
    torch.save({"model": convert_sam2.to_official_state_dict(tiny.state_dict())}, pt)
    assert detect_family(pt) == "sam2"
    out, family = convert_weights(pt, tmp_path / "hf")
    assert family == "sam2" and (out / "config.json").is_file()
    loaded, info = build_sam2(str(out))
    assert info["kind"] == "hf"
    saved = load_file(str(out / "model.safetensors"))
    reference = tiny.state_dict()
    assert all(torch.equal(saved[k], reference[k]) for k in saved)
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())
