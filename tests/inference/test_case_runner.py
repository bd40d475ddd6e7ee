"""The case runner's rules with a stand-in for the model: skip, redo, refuse, keep going, report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ragsam.data.cases import CaseRef
from ragsam.errors import CasesFailedError, InputError, OutputExistsError
from ragsam.inference.case_runner import model_key, plan_cases, run_cases, sidecar_path


def _setup(tmp_path: Path, n: int = 3) -> tuple[list[CaseRef], list[Path]]:
    src = tmp_path / "src"
    src.mkdir()
    refs = []
    for i in range(n):
        (src / f"c{i}.nii.gz").write_bytes(f"image {i}".encode())
        refs.append(CaseRef(f"c{i}", src / f"c{i}.nii.gz", None))
    return refs, [tmp_path / "out" / f"c{i}.nii.gz" for i in range(n)]


def _run(refs, outputs, key="model-1", force=False, fail=(), crash=()):
    """Run with a stand-in model: the output is the input's bytes plus the key."""
    calls = []

    def work(job):
        calls.append(job.case_id)
        if job.case_id in fail:
            raise InputError(job.ref.image, "not a readable image")
        if job.case_id in crash:
            raise RuntimeError("boom")
        job.output.parent.mkdir(parents=True, exist_ok=True)
        job.output.write_bytes(job.ref.image.read_bytes() + key.encode())
        return job.case_id, {"case": job.case_id}

    plan = plan_cases(refs, outputs, model_key(model=key), force)
    return run_cases(plan, work, lambda job, recorded: f"skipped {recorded['case']}"), calls


def test_rerun_skips_finished_and_redoes_what_changed(tmp_path):
    refs, outputs = _setup(tmp_path)
    assert _run(refs, outputs) == (["c0", "c1", "c2"], ["c0", "c1", "c2"])
    side = json.loads(sidecar_path(outputs[0]).read_text())
    assert side["case_id"] == "c0" and side["output_sha1"] and side["result"] == {"case": "c0"}
    assert _run(refs, outputs) == (["skipped c0", "skipped c1", "skipped c2"], [])
    refs[1].image.write_bytes(b"image 1, corrected")  # a changed input: redone without --force
    assert _run(refs, outputs) == (["skipped c0", "c1", "skipped c2"], ["c1"])
    assert _run(refs, outputs, key="model-2")[1] == ["c0", "c1", "c2"]  # another model: all redone
    assert _run(refs, outputs, key="model-2", force=True)[1] == ["c0", "c1", "c2"]  # --force redoes all


def test_outputs_that_are_not_ragsams_are_refused_before_any_work(tmp_path):
    refs, outputs = _setup(tmp_path)
    _run(refs, outputs)
    outputs[2].write_bytes(b"edited by hand")
    outputs[1].unlink()
    with pytest.raises(OutputExistsError, match="c2.nii.gz: already exists"):
        _run(refs, outputs)
    assert not outputs[1].exists()  # refused before any case ran
    sidecar_path(outputs[2]).unlink()
    outputs[2].write_bytes(b"someone else's")
    with pytest.raises(OutputExistsError):
        _run(refs, outputs)
    assert _run(refs, outputs, force=True)[1] == ["c0", "c1", "c2"]


def test_kill_between_claim_and_output_is_redone(tmp_path):
    refs, outputs = _setup(tmp_path)
    _run(refs, outputs)
    side = json.loads(sidecar_path(outputs[1]).read_text())
    sidecar_path(outputs[1]).write_text(json.dumps({**side, "output_sha1": None}))  # a pending claim
    outputs[1].write_bytes(b"torn? no: outputs are atomic, but unverified")
    assert _run(refs, outputs)[1] == ["c1"]


def test_keeps_going_past_failures_and_reports_each(tmp_path):
    refs, outputs = _setup(tmp_path, 4)
    with pytest.raises(CasesFailedError) as exc:
        _run(refs, outputs, fail={"c1"})
    assert [c for c, _ in exc.value.failures] == ["c1"] and exc.value.results == ["c0", "c2", "c3"]
    assert exc.value.exit_code == 2
    assert exc.value.lines() == [f"ragsam: error: {refs[1].image}: not a readable image"]
    assert not outputs[1].exists() and not sidecar_path(outputs[1]).exists()
    assert _run(refs, outputs) == (["skipped c0", "c1", "skipped c2", "skipped c3"], ["c1"])
    with pytest.raises(CasesFailedError) as exc:
        _run(refs, outputs, force=True, fail={"c0"}, crash={"c3"})
    assert exc.value.exit_code == 1 and exc.value.lines() == [
        f"ragsam: error: {refs[0].image}: not a readable image",
        "ragsam: internal error: case c3: RuntimeError: boom"]


def test_a_single_case_raises_its_own_error(tmp_path):
    refs, outputs = _setup(tmp_path, 1)
    with pytest.raises(InputError, match="not a readable image"):
        _run(refs, outputs, fail={"c0"})


def test_cli_prints_one_line_per_failed_case(capsys):
    from ragsam.cli import main

    def boom(*args, **kwargs):
        raise CasesFailedError([("a", InputError("/x/a.nii.gz", "bad")), ("b", InputError("/x/b.nii.gz", "worse"))],
                               [], 3)

    original = main.app
    main.app = boom
    try:
        assert main.run_cli(["predict"]) == 2
    finally:
        main.app = original
    assert capsys.readouterr().err.splitlines() == ["ragsam: error: /x/a.nii.gz: bad", "ragsam: error: /x/b.nii.gz: worse"]


def _run_with_seg(refs, outputs, force=False, crash_after_output=()):
    """Like ``_run`` with a companion per case (``<case>.seg.dcm``, as ``--output-format both`` writes)."""
    calls = []
    companions = [(out.with_name(out.name.replace(".nii.gz", ".seg.dcm")),) for out in outputs]

    def work(job):
        calls.append(job.case_id)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        job.output.write_bytes(b"nifti " + job.ref.image.read_bytes())
        if job.case_id in crash_after_output:
            raise RuntimeError("killed before the SEG")
        job.companions[0].write_bytes(b"seg " + job.ref.image.read_bytes())
        return job.case_id, {"case": job.case_id}

    plan = plan_cases(refs, outputs, model_key(model="m", output_format="both"), force, companions)
    return run_cases(plan, work, lambda job, recorded: f"skipped {recorded['case']}"), calls, companions


def test_companions_are_part_of_the_output(tmp_path):
    refs, outputs = _setup(tmp_path)
    _, calls, segs = _run_with_seg(refs, outputs)
    assert calls == ["c0", "c1", "c2"]
    side = json.loads(sidecar_path(outputs[0]).read_text())
    assert side["companions"] == {"c0.seg.dcm": hashlib.sha1(b"seg image 0").hexdigest()}
    assert _run_with_seg(refs, outputs)[1] == []  # all there: skipped
    segs[0][0].unlink()  # a missing SEG: that case is redone
    assert _run_with_seg(refs, outputs)[1] == ["c0"]
    segs[1][0].write_bytes(b"edited in another tool")  # a SEG that is not ours any more: refused
    with pytest.raises(OutputExistsError, match="c1.seg.dcm: already exists"):
        _run_with_seg(refs, outputs)
    segs[1][0].unlink()
    outputs[2].unlink()
    sidecar_path(outputs[2]).unlink()  # someone else's SEG with no NIfTI of ours beside it: refused too
    with pytest.raises(OutputExistsError, match="c2.seg.dcm: already exists"):
        _run_with_seg(refs, outputs)
    assert _run_with_seg(refs, outputs, force=True)[1] == ["c0", "c1", "c2"]
    segs[2][0].unlink()
    with pytest.raises(RuntimeError, match="killed before the SEG"):  # one case: its own error
        _run_with_seg(refs[2:], outputs[2:], crash_after_output=("c2",))
    side = json.loads(sidecar_path(outputs[2]).read_text())
    assert side["output_sha1"] is None and side["companions"] == {"c2.seg.dcm": None}  # pending claim kept
    assert _run_with_seg(refs[2:], outputs[2:])[1] == ["c2"]  # ... so the rerun redoes it
