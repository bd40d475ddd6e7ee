"""TrainConfig: paper defaults, presets, overrides, refusal of impossible values."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragsam.config import dump_config, load_config
from ragsam.errors import InputError
from ragsam.training.config import (
    TrainConfig,
    load_train_config,
    preset_names,
    resolve_grad_accum,
    resolve_preset,
)


def test_defaults_are_the_papers_recipe():
    cfg = TrainConfig()
    o = cfg.optim
    assert (o.dice_weight, o.ce_weight, o.lr, o.warmup, o.max_iterations, o.stop_iteration) == (
        0.8, 0.2, 0.005, 250, 18600, 14880)
    assert (o.betas, o.weight_decay, o.power) == ([0.9, 0.999], 0.1, 0.9)
    assert cfg.last_iteration == 14880
    assert cfg.model.peft.method == "lora" and cfg.model.peft.rank == 4
    assert (cfg.model.arch, cfg.model.weights, cfg.model.image_size) == ("sam_vit_b", "facebook/sam-vit-base", 512)


@pytest.mark.parametrize("name", ["samed", "samed_s", "medsa", "full", "tiny"])
def test_presets_load_and_round_trip(name, tmp_path):
    cfg = load_train_config(name, ["data.prepared=/x"])
    assert cfg.data.prepared == "/x"
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(TrainConfig, saved) == cfg


def test_preset_specifics():
    assert load_train_config("samed_s").model.peft.decoder == "lora"
    assert load_train_config("medsa").model.peft.method == "adapter"
    assert load_train_config("full").model.peft.method == "none"
    tiny = load_train_config("tiny", ["optim.lr=0.01", "data.val=[test]"])
    assert (tiny.model.arch, tiny.optim.lr, tiny.data.val) == ("tiny", 0.01, ["test"])
    assert preset_names() == ["full", "medsa", "samed", "samed_s", "tiny"]
    assert resolve_preset("samed").is_file() and resolve_preset("samed").parent.name == "presets"


@pytest.mark.parametrize("override, needle", [
    ("data.context=2", "context"),
    ("optim.batch_size=0", "batch_size"),
    ("optim.max_iterations=-1", "max_iterations"),
    ("optim.betas=[0.9]", "betas"),
    ("optim.learning_rate=0.1", "unknown configuration key"),
])
def test_bad_values_are_refused(override, needle):
    with pytest.raises(InputError, match=needle):
        load_train_config(None, [override])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(InputError, match="samed"):
        load_train_config("no-such-preset")


def test_bf16_cpu_and_auto_workers_round_trip(tmp_path):
    default = TrainConfig()
    assert (default.optim.bf16, default.optim.bf16_cpu, default.data.num_workers) == (True, False, -1)
    cfg = load_train_config("samed", ["optim.bf16_cpu=true", "data.num_workers=3"])
    assert (cfg.optim.bf16_cpu, cfg.data.num_workers) == (True, 3)
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(cfg))
    assert "bf16_cpu: true" in saved.read_text()
    assert load_config(TrainConfig, saved) == cfg
    # a config.yaml written before bf16_cpu existed still loads, with the CPU kept in fp32
    saved.write_text(saved.read_text().replace("  bf16_cpu: true\n", ""))
    assert load_config(TrainConfig, saved).optim.bf16_cpu is False
    with pytest.raises(InputError, match="bf16_cpu"):
        load_train_config(None, ["optim.bf16_cpu=maybe"])
    with pytest.raises(InputError, match=r"data.num_workers=-2 must be >= 0, or -1 for auto"):
        load_train_config(None, ["data.num_workers=-2"])


GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", ["samed", "samed_s", "medsa"])
def test_paper_presets_resolve_to_their_golden_configuration(name):
    golden = (GOLDEN / f"{name}.yaml").read_text(encoding="utf-8")
    assert dump_config(load_train_config(name)) == "\n".join(
        line for line in golden.splitlines() if not line.startswith("#")) + "\n"


def test_samed_presets_carry_samed_recipe():
    for name in ("samed", "samed_s"):
        cfg = load_train_config(name)
        m, o = cfg.model, cfg.optim
        assert (m.normalize, m.head_init, m.peft.train_prompt_encoder) == ("none", "fresh", True)
        assert (o.loss_resolution, o.global_batch, o.batch_size, o.bf16) == ("low", 24, 12, False)
    # ragsam's own choices stay one override away
    ours = load_train_config("samed", ["model.normalize=sam", "optim.loss_resolution=full",
                                       "model.head_init=pretrained"])
    assert (ours.model.normalize, ours.optim.loss_resolution, ours.model.head_init) == ("sam", "full", "pretrained")


@pytest.mark.parametrize("processes, accum", [(1, 2), (2, 1)])
def test_global_batch_derives_gradient_accumulation(processes, accum):
    optim = load_train_config("samed").optim
    assert resolve_grad_accum(optim, processes) == accum


def test_global_batch_that_does_not_split_is_refused():
    optim = load_train_config("samed", ["optim.global_batch=30"]).optim
    with pytest.raises(InputError, match="global_batch=30 is not a multiple of optim.batch_size=12 x 1"):
        resolve_grad_accum(optim, 1)
    clash = load_train_config("samed", ["optim.grad_accum=3"]).optim
    with pytest.raises(InputError, match="grad_accum=3 disagrees with optim.global_batch=24"):
        resolve_grad_accum(clash, 1)
    assert resolve_grad_accum(load_train_config("tiny", ["optim.grad_accum=3"]).optim, 4) == 3


@pytest.mark.parametrize("override, needle", [
    ("optim.loss_resolution=half", "loss_resolution"), ("model.normalize=imagenet", "normalize"),
    ("model.head_init=zero", "head_init"), ("optim.global_batch=0", "global_batch")])
def test_new_options_refuse_bad_values(override, needle):
    with pytest.raises(InputError, match=needle):
        load_train_config("samed", [override])
