"""Run a command over a folder of cases: keep going past failures, resume where a run stopped.

Shared by ``ragsam predict`` and ``ragsam segment`` (one rule for both):

* **Keep going.** A case that fails (unreadable image, bad geometry, out of memory) is
  recorded and the next case runs; at the end :class:`CasesFailedError` lists every
  failed case (the command prints one line per case and exits 2 when every failure is a
  user input error, else 1). A failed case leaves no output file (writes are atomic).
* **Resume.** Beside each output ``<name>`` a small sidecar ``.<name>.ragsam.json``
  records the fingerprint of what produced it: the content of the input files (SHA-1,
  re-read only when a file's size or modification time changed, as ``prepare`` does) and
  a key of the model and every option that changes the result (``model_key``). A rerun
  skips a case whose output is unchanged since ragsam wrote it and whose inputs and
  model are unchanged (nnU-Net's prediction does the same); with changed inputs or model
  it is redone without ``--force``, since ragsam wrote the old output for that very case.
  An output without a sidecar (or edited since) is someone else's file: it is refused
  before any work, as ever, unless ``force``, which also redoes finished cases.
* **Companions.** An output may come with companion files written with it (the DICOM SEG
  beside a NIfTI with ``--output-format both``): the sidecar records their hashes too, a
  case is finished only when every companion is there unchanged, and a companion that
  ragsam did not write (absent from the sidecar, or edited since) is refused like the output.
  The output format is part of the model key (``model_key(..., output_format=...)``).
* **Kill-safe.** The sidecar is written (atomically) *before* the output as "pending"
  and completed after it, so a kill between the two leaves an output that the next run
  knows is its own and redoes; a kill at any other moment leaves finished cases skipped.

:func:`plan_cases` decides what to do (nothing written); :class:`CaseRecorder` writes the
sidecars and collects outcomes; :func:`run_cases` is the plain sequential loop over
them. A multi-process caller shards the list returned by :func:`plan_cases`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragsam.errors import CasesFailedError, OutputExistsError
from ragsam.utils import ranks
from ragsam.utils.atomic import write_json

FORMAT = "ragsam-case-output"
VERSION = 1


@dataclass(frozen=True)
class CaseJob:
    """One case to run: its reference (``CaseRef``), output file and fingerprint.

    Attributes:
        key: hex SHA-1 of the input files' content and the model key.
        files: input file records (path, size, mtime_ns, sha1) for the sidecar.
        companions: files written with ``output`` (recorded in its sidecar).
    """

    case_id: str
    ref: Any
    output: Path
    key: str
    files: list[dict[str, Any]] = field(default_factory=list)
    companions: tuple[Path, ...] = ()


def sidecar_path(output: str | os.PathLike) -> Path:
    """The fingerprint file of ``output``: ``.<name>.ragsam.json`` beside it."""
    output = Path(output)
    return output.with_name(f".{output.name}.ragsam.json")


def model_key(**parts: Any) -> str:
    """A key of everything besides the inputs that changes an output (JSON-able values)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file (for model keys: weights, configs, bank files)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_key(spec: str) -> Any:
    """What identifies weights named by ``spec``: a local file or folder by its files' names,
    sizes and modification times (cheap; hashing gigabytes on every rerun is not), else the
    hub id or builder name itself."""
    path = Path(spec)
    if path.is_file():
        st = path.stat()
        return [spec, st.st_size, st.st_mtime_ns]
    if path.is_dir():
        return [spec, *([str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns]
                        for p in sorted(path.rglob("*")) if p.is_file())]
    return spec


def _read_sidecar(output: Path) -> dict[str, Any] | None:
    try:
        side = json.loads(sidecar_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return side if isinstance(side, dict) and side.get("format") == FORMAT else None


def _output_sha1(output: Path) -> str:
    digest = hashlib.sha1()
    with output.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CasePlan:
    """What a run over cases will do.

    Attributes:
        todo: jobs to run (a sharded run splits this list).
        done: ``(job, recorded result JSON)`` of finished cases that are skipped.
        case_ids: every case, in input order (the order of the results).
    """

    todo: list[CaseJob]
    done: list[tuple[CaseJob, dict[str, Any]]]
    case_ids: list[str]


def _companions_ours(side: dict[str, Any] | None, companions: Sequence[Path]) -> tuple[bool, bool]:
    """``(ours, finished)`` of the companions that exist: recorded in the sidecar (pending or with
    their current hash), and every companion present with its recorded hash."""
    recorded = (side or {}).get("companions") or {}
    ours = finished = True
    for path in companions:
        if not path.exists():
            finished = False
            continue
        sha = recorded.get(path.name, "absent")
        if sha is None:
            finished = False  # claimed by a run that did not finish
        elif sha != _output_sha1(path):
            ours = finished = False
    return ours, finished


def plan_cases(refs: Sequence[Any], outputs: Sequence[Path], key: str, force: bool,
               companions: Sequence[Sequence[Path]] | None = None) -> CasePlan:
    """Split the cases into those to run and those already done; nothing is written.

    Args:
        refs: ``CaseRef`` per case (``image``: a file or DICOM folder; labels are ignored).
        outputs: the output file of each case (same order).
        key: :func:`model_key` of the model and options.
        force: redo every case and replace outputs ragsam did not write.
        companions: per case, files written with its output (e.g. its DICOM SEG).
    Returns:
        :class:`CasePlan`.
    Raises:
        OutputExistsError: an output that ragsam did not write for this case exists and
            ``force`` is false (checked for every case before any work).
    """
    from ragsam.data.fingerprint import fingerprint_case

    todo: list[CaseJob] = []
    done: list[tuple[CaseJob, dict[str, Any]]] = []
    companions = companions if companions is not None else [()] * len(outputs)
    for ref, out, extra in zip(refs, outputs, companions, strict=True):
        extra = tuple(Path(p) for p in extra)
        side = _read_sidecar(out) if out.exists() else None
        side = side if side is not None and side.get("case_id") == ref.case_id else None
        known = side.get("files") if side else None
        case_key, files = fingerprint_case(dataclasses.replace(ref, labels=None), key, known)
        job = CaseJob(ref.case_id, ref, out, case_key, files, extra)
        extra_ours, extra_finished = _companions_ours(side if out.exists() else None, extra)
        if not extra_ours and not force:
            raise OutputExistsError(next(p for p in extra if p.exists()))
        if not out.exists():
            todo.append(job)
            continue
        ours = side is not None and (side.get("output_sha1") is None or side.get("output_sha1") == _output_sha1(out))
        if not ours and not force:
            raise OutputExistsError(out)
        finished = ours and extra_finished and side.get("output_sha1") is not None and side.get("key") == case_key
        if finished and not force:
            done.append((job, side.get("result") or {}))
        else:
            todo.append(job)  # ragsam's own output for this case, from other inputs or model
    return CasePlan(todo, done, [ref.case_id for ref in refs])


def _companion_record(job: CaseJob, final: bool) -> dict[str, Any]:
    """The sidecar's ``companions`` entry: name -> SHA-1 (``None`` while pending); nothing without companions."""
    if not job.companions:
        return {}
    return {"companions": {p.name: _output_sha1(p) if final else None for p in job.companions}}


class CaseRecorder:
    """Writes the sidecars around each output and collects the outcome of every case.

    Usage: ``begin(job)`` before the output is written, ``finish(job, result_json, result)``
    after it, ``fail(job, exc)`` when the case failed; ``close()`` at the end.

    Args:
        case_ids: every case of the run, in the order results are returned.
    """

    def __init__(self, case_ids: Sequence[str]) -> None:
        self.order = {cid: i for i, cid in enumerate(case_ids)}
        self.results: list[tuple[str, Any]] = []
        self.failures: list[tuple[str, BaseException]] = []

    def begin(self, job: CaseJob) -> None:
        """Claim the output (pending sidecar) before writing it."""
        write_json(sidecar_path(job.output), {"format": FORMAT, "version": VERSION, "case_id": job.case_id,
                                              "key": job.key, "files": job.files, "output_sha1": None,
                                              **_companion_record(job, final=False)})

    def finish(self, job: CaseJob, result_json: dict[str, Any], result: Any) -> None:
        """Record a written output (its hash makes it skippable next time)."""
        write_json(sidecar_path(job.output), {"format": FORMAT, "version": VERSION, "case_id": job.case_id,
                                              "key": job.key, "files": job.files,
                                              "output_sha1": _output_sha1(job.output), "result": result_json,
                                              **_companion_record(job, final=True)})
        self.results.append((job.case_id, result))

    def skip(self, job: CaseJob, result: Any) -> None:
        """Record a case found finished."""
        self.results.append((job.case_id, result))

    def fail(self, job: CaseJob, exc: BaseException) -> None:
        """Record a failed case; a sidecar we wrote for it goes if its output was never written."""
        self.failures.append((job.case_id, exc))
        if not job.output.exists():
            with contextlib.suppress(OSError):
                sidecar_path(job.output).unlink()

    def close(self) -> list[Any]:
        """The results in case order, or :class:`CasesFailedError` when any case failed.

        A run of a single case raises that case's own exception instead.
        """
        results = [r for _, r in sorted(self.results, key=lambda item: self.order[item[0]])]
        if len(self.order) == 1 and self.failures:
            raise self.failures[0][1]
        if self.failures:
            failures = sorted(self.failures, key=lambda item: self.order[item[0]])
            raise CasesFailedError(failures, results, len(self.order))
        return results


def run_cases(plan: CasePlan, work: Callable[[CaseJob], tuple[Any, dict[str, Any]]],
              from_json: Callable[[CaseJob, dict[str, Any]], Any]) -> list[Any]:
    """Run ``work`` on every case of ``plan.todo`` in turn, past failures.

    Args:
        plan: from :func:`plan_cases` (``plan.done`` is reported, not rerun).
        work: writes one case's output (atomically) and returns ``(result, result_json)``.
        from_json: rebuilds a finished case's result from its sidecar.
    Returns:
        Results of the finished and skipped cases, in input order.
    Raises:
        CasesFailedError: at the end, when any case failed.
    """
    recorder = CaseRecorder(plan.case_ids)
    for job, recorded in plan.done:
        recorder.skip(job, from_json(job, recorded))
    ranks.barrier()  # torchrun: a rank that failed to plan or load stops every rank before any case runs
    for job in ranks.shard_todo(plan.todo, plan.case_ids, ranks.current()):  # torchrun: this rank's cases
        try:
            recorder.begin(job)
            result, result_json = work(job)
            recorder.finish(job, result_json, result)
        except Exception as exc:  # noqa: BLE001 - every failure is reported per case at the end
            recorder.fail(job, exc)
    ranks.merge_outcomes(recorder)  # torchrun: every rank returns (or fails with) all outcomes
    return recorder.close()
