"""ragsam.utils.precision: one bf16 rule for CUDA, CPUs with native bf16, and fp32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ragsam.utils import precision

REAL_CHECK = precision.cpu_has_native_bf16  # the lru_cached function (monkeypatch replaces the name)


@pytest.fixture
def native(monkeypatch):
    """Set what the CPU reports: ``native(True)`` = AVX512-BF16/AMX present."""

    def set_native(value: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: value)

    REAL_CHECK.cache_clear()
    yield set_native
    REAL_CHECK.cache_clear()


class _FakeCpuinfo:
    """Stands in for ``pathlib.Path`` inside precision: ``/proc/cpuinfo`` holds ``text``."""

    text: str | None = None

    def __init__(self, path: str) -> None:
        assert path == "/proc/cpuinfo"

    def read_text(self) -> str:
        if self.text is None:
            raise PermissionError("/proc/cpuinfo")
        return self.text


@pytest.mark.parametrize("flags, expected", [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n", True),
    ("flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n", True),
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n", False),
    (None, False),  # unreadable (no /proc): fp32
])
def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, flags, expected):
    fake = type("Fake", (_FakeCpuinfo,), {"text": flags})
    monkeypatch.setattr(precision, "Path", fake)
    precision.cpu_has_native_bf16.cache_clear()
    try:
        assert precision.cpu_has_native_bf16() is expected
    finally:
        precision.cpu_has_native_bf16.cache_clear()


def test_cpu_needs_both_the_opt_in_and_native_bf16(native):
    native(True)
    assert precision.uses_bf16("cpu", bf16=True, cpu=True) is True
    assert precision.uses_bf16(torch.device("cpu"), bf16=True, cpu=False) is False  # opt-in only
    assert precision.uses_bf16("cpu", bf16=False, cpu=True) is False  # bf16=False forces fp32
    native(False)
    assert precision.uses_bf16("cpu", bf16=True, cpu=True) is False
    assert precision.uses_bf16("meta", bf16=True, cpu=True) is False


def test_cuda_follows_the_gpu_and_the_bf16_switch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.uses_bf16("cuda", bf16=True) is True
    assert precision.uses_bf16("cuda:1", bf16=False) is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # pre-Ampere
    assert precision.uses_bf16("cuda") is False
    assert isinstance(precision.autocast("cuda"), type(precision.autocast("cpu", bf16=False)))


@pytest.mark.parametrize("is_native, opt_in, bf16, dtype", [
    (True, True, True, torch.bfloat16),
    (True, False, True, torch.float32),
    (True, True, False, torch.float32),
    (False, True, True, torch.float32),
])
def test_linear_runs_in_bf16_only_under_cpu_bf16_autocast(native, is_native, opt_in, bf16, dtype):
    native(is_native)
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with precision.autocast("cpu", bf16, cpu=opt_in):
        y = layer(x)
    assert y.dtype == dtype
    expected = x @ layer.weight.T + layer.bias
    if dtype == torch.float32:
        assert torch.equal(y, layer(x))  # same op outside autocast: exactly fp32
    assert torch.allclose(y.float(), expected, atol=3e-2)  # and still the layer's output


def test_cpu_bf16_note_only_when_asked_on_a_cpu_without_native_bf16(native):
    native(False)
    assert "no native bf16" in precision.cpu_bf16_note("cpu", True, cpu=True)
    assert precision.cpu_bf16_note("cpu", True, cpu=False) is None  # not asked
    assert precision.cpu_bf16_note("cpu", False, cpu=True) is None  # bf16 switched off altogether
    native(True)
    assert precision.cpu_bf16_note("cpu", True, cpu=True) is None


def test_predict_cli_says_when_cpu_bf16_cannot_run(native, tmp_path, capsys):
    from ragsam.cli.main import run_cli

    native(False)
    # the note comes before any work; the missing run folder then fails as usual (exit 2)
    assert run_cli(["predict", str(tmp_path / "no-run"), str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "o"),
                    "--device", "cpu", "--cpu-bf16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ragsam: note: CPU bf16 was requested but this CPU has no native bf16")
    assert err.count("ragsam: error:") == 1
