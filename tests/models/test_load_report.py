"""``LoadReport``: the typed model load report."""

from __future__ import annotations

import pytest

from ragsam.errors import InputError
from ragsam.models.load_report import LoadReport


def test_random_and_round_trip() -> None:
    report = LoadReport.random("tiny", 64)
    assert report.to_json() == {"format_version": 1, "source": "random", "arch": "tiny", "image_size": 64,
                                "resized": [], "new": ["all parameters"], "dropped": [], "reused_tokens": []}
    assert LoadReport.from_json(report.to_json()) == report
    loaded = LoadReport("sam.pth", "sam_vit_b", 256, resized=["pos"], reused_tokens=["0..3"])
    assert LoadReport.from_json(loaded.to_json()) == loaded


def test_versions_and_refusals() -> None:
    old = {"source": "x.pth", "arch": "tiny", "resized": ["a"]}  # recorded before versions
    assert LoadReport.from_json(old) == LoadReport("x.pth", "tiny", resized=["a"])
    with pytest.raises(InputError, match="run.json: format version 2 is written by a newer ragsam"):
        LoadReport.from_json({**old, "format_version": 2}, "run.json")
    with pytest.raises(InputError, match="run.json: malformed load report"):
        LoadReport.from_json({"arch": "tiny"}, "run.json")
