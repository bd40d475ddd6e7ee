"""Dataclass configuration from YAML with command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from ragsam.config import dump_config, load_config, with_overrides
from ragsam.errors import InputError


@dataclass
class Inner:
    rank: int = 4
    targets: list[str] = field(default_factory=lambda: ["q", "v"])


@dataclass
class Outer:
    lr: float = 0.005
    name: str = "run"
    bf16: bool = True
    window: tuple[float, float] = (-125.0, 275.0)
    note: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults_yaml_then_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.001\ninner:\n  rank: 8\n")
    cfg = load_config(Outer, cfg_file, ["inner.targets=q,k,v", "bf16=false", "window=[-100, 200]", "note=hi"])
    assert cfg.lr == 0.001
    assert cfg.inner.rank == 8
    assert cfg.inner.targets == ["q", "k", "v"]
    assert cfg.bf16 is False
    assert cfg.window == (-100.0, 200.0)
    assert cfg.note == "hi"
    assert cfg.name == "run"


def test_dump_round_trip(tmp_path):
    cfg = load_config(Outer, None, ["inner.rank=16"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert yaml.safe_load(path.read_text())["inner"]["rank"] == 16
    assert load_config(Outer, path) == cfg


def test_unknown_key_and_bad_value_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown configuration key 'inner.rnk'"):
        load_config(Outer, None, ["inner.rnk=3"])
    with pytest.raises(InputError, match="'abc' is not a valid int"):
        load_config(Outer, None, ["inner.rank=abc"])
    with pytest.raises(InputError, match="not of the form key=value"):
        load_config(Outer, None, ["rank"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(Outer, bad)
    with pytest.raises(InputError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_bad_override_is_blamed_on_the_command_line_not_the_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.001\n")
    with pytest.raises(InputError, match=r"^<command line>: unknown configuration key 'lrr'"):
        load_config(Outer, cfg_file, ["lrr=1"])
    cfg_file.write_text("lrr: 0.001\n")
    with pytest.raises(InputError, match=r"c.yaml: unknown configuration key 'lrr'"):
        load_config(Outer, cfg_file, ["lr=1"])


def test_with_overrides_changes_a_copy_of_a_typed_config():
    """What a user wrote (command line, plan file) applied to a config the code built."""
    cfg = Outer(lr=0.01, inner=Inner(rank=2))
    out = with_overrides(cfg, ["inner.rank=8", "window=[-100, 200]"])
    assert (out.lr, out.inner.rank, out.inner.targets, out.window) == (0.01, 8, ["q", "v"], (-100.0, 200.0))
    assert (cfg.inner.rank, cfg.window) == (2, (-125.0, 275.0))  # the original is untouched
    assert with_overrides(cfg, []) is cfg
    with pytest.raises(InputError, match="<plan>: unknown configuration key 'inner.alpha'"):
        with_overrides(cfg, ["inner.alpha=1"], source="<plan>")
