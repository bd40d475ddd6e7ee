"""``plan.json`` and ``done.json`` of the experiment runner: typed, versioned, the only readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragsam.errors import InputError
from ragsam.experiments.records import PlanRecord, VariantResult, forget_done, is_done


def test_done_json_round_trip_versions_and_refusals(tmp_path: Path) -> None:
    assert VariantResult.read(tmp_path) is None and not is_done(tmp_path)
    result = VariantResult("rank 4", {"liver": 0.875, "spleen": float("nan")}, 1234, "p", 1234 * 4 / 2**20)
    result.write(tmp_path)
    written = json.loads((tmp_path / "done.json").read_text())
    assert written["format_version"] == 1 and written["trainable_parameters"] == 1234
    back = VariantResult.read(tmp_path)
    assert back is not None and back.name == "rank 4" and back.dice["liver"] == 0.875
    assert back.trainable_mib == pytest.approx(1234 * 4 / 2**20) and is_done(tmp_path)
    # a record written before versions were recorded is version 1
    (tmp_path / "done.json").write_text(json.dumps({k: v for k, v in written.items() if k != "format_version"}))
    assert VariantResult.read(tmp_path).trainable_parameters == 1234
    (tmp_path / "done.json").write_text(json.dumps({**written, "format_version": 3}))
    with pytest.raises(InputError, match="format version 3 is written by a newer ragsam"):
        VariantResult.read(tmp_path)
    (tmp_path / "done.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(InputError, match="malformed variant record"):
        VariantResult.read(tmp_path)
    forget_done(tmp_path)
    assert not is_done(tmp_path)


def test_plan_json_must_match_unless_forced(tmp_path: Path) -> None:
    record = PlanRecord({"name": "a", "variants": [1, 2]}, {"k": 4})
    record.check_and_write(tmp_path, force=False)
    assert json.loads((tmp_path / "plan.json").read_text()) == {"format_version": 1, "plan": record.plan,
                                                                 "settings": {"k": 4}}
    record.check_and_write(tmp_path, force=False)  # the same plan again
    other = PlanRecord(record.plan, {"k": 2})
    with pytest.raises(InputError, match="another plan or other settings"):
        other.check_and_write(tmp_path, force=False)
    other.check_and_write(tmp_path, force=True)
    assert PlanRecord.read(tmp_path).settings == {"k": 2}
    # a plan.json written before versions were recorded still matches its plan
    (tmp_path / "plan.json").write_text(json.dumps({"plan": record.plan, "settings": record.settings}))
    record.check_and_write(tmp_path, force=False)
    (tmp_path / "plan.json").write_text(json.dumps({"format_version": 2, "plan": {}, "settings": {}}))
    with pytest.raises(InputError, match="format version 2"):
        PlanRecord.read(tmp_path)
