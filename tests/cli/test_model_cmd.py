"""``ragsam info``, ``ragsam merge`` and ``ragsam weights convert`` through the real command line."""

from __future__ import annotations

import pickle
import re

import pytest
import torch
import yaml

from ragsam.cli.main import run_cli
from ragsam.config import to_dict
from ragsam.models import ModelConfig, PeftConfig, build_model, build_sam_model, save_trainable
from ragsam.models.export import save_hf_folder


@pytest.fixture()
def base_folder(tmp_path):
    torch.manual_seed(0)
    return save_hf_folder(build_sam_model("tiny", "random", num_classes=3, image_size=64), tmp_path / "base")


def _run_folder(tmp_path, base_folder, **peft):
    cfg = ModelConfig(arch="tiny", weights=str(base_folder), num_classes=3, image_size=64, peft=PeftConfig(**peft))
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": to_dict(cfg), "seed": 1}), encoding="utf-8")
    save_trainable(model, run / "model.safetensors", {"iteration": "10"})
    return run, model


def _row(text, name):
    line = next(x for x in text.splitlines() if re.search(rf"\b{name}\b", x))
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?=\s)", line + " ")][:2]


def test_info_prints_the_counts_per_component(capsys):
    assert run_cli(["info", "--arch", "sam_vit_b", "--peft", "lora", "--rank", "4"]) == 0
    out = capsys.readouterr().out
    assert _row(out, "peft") == [147_456, 147_456]
    assert _row(out, "image_encoder")[0] == 0
    assert "sam_vit_b at 512 px" in out


def test_info_reads_a_run_configuration(tmp_path, base_folder, capsys):
    run, model = _run_folder(tmp_path, base_folder, method="adapter", decoder="frozen")
    assert run_cli(["info", "--config", str(run / "config.yaml")]) == 0
    out = capsys.readouterr().out
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert _row(out, "peft") == [trainable, trainable] and "Med-SA adapters" in out


def test_info_refuses_unknown_architecture(capsys):
    assert run_cli(["info", "--arch", "vit_q"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "unknown architecture 'vit_q'" in err


def test_merge_writes_a_folder_with_the_runs_outputs(tmp_path, base_folder, capsys):
    run, model = _run_folder(tmp_path, base_folder, method="lora", decoder="lora")
    out = tmp_path / "merged"
    assert run_cli(["merge", str(run), "-o", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert yaml.safe_load((out / "ragsam_model.yaml").read_text())["peft"]["decoder"] == "lora"
    merged = build_sam_model("tiny", str(out), num_classes=3, image_size=64).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(merged(images), model(images), atol=1e-5, rtol=1e-5)
    assert run_cli(["merge", str(run), "-o", str(out)]) == 2
    assert "already exists (use --force to overwrite)" in capsys.readouterr().err
    assert run_cli(["merge", str(run), "-o", str(out), "--force"]) == 0


def test_merge_refuses_adapters_and_non_runs(tmp_path, base_folder, capsys):
    run, _ = _run_folder(tmp_path, base_folder, method="adapter")
    assert run_cli(["merge", str(run), "-o", str(tmp_path / "m")]) == 2
    assert "adapters are non-linear and cannot be merged" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    assert run_cli(["merge", str(tmp_path), "-o", str(tmp_path / "m")]) == 2
    assert "not a ragsam run folder (no config.yaml)" in capsys.readouterr().err


def test_weights_convert(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_sam_model("tiny", "random", num_classes=3, image_size=128)
    src = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), src)  # already in the HF layout: convert is then a strict copy
    out = tmp_path / "hf"
    assert run_cli(["weights", "convert", str(src), str(out)]) == 0
    assert (out / "config.json").is_file()
    again = build_sam_model("tiny", str(out), num_classes=3, image_size=128)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(), strict=True))
    assert run_cli(["weights", "convert", str(src), str(out)]) == 2
    capsys.readouterr()


class _Payload:
    def __reduce__(self):
        return (print, ("this would run",))


def test_weights_convert_refuses_unsafe_and_corrupt_files(tmp_path, capsys):
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": _Payload()}, protocol=2))
    assert run_cli(["weights", "convert", str(tmp_path / "evil.pth"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ragsam: error: ") and "evil.pth: refusing to unpickle" in err and err.count("\n") == 1
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    assert run_cli(["weights", "convert", str(tmp_path / "bad.pth"), str(tmp_path / "o")]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
