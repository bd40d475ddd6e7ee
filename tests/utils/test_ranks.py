"""The rank/shard rule, and evaluate under two gloo processes equal to one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch.multiprocessing as mp

from ragsam.data.geometry import Geometry
from ragsam.data.volume import write_labels
from ragsam.errors import InputError, RagsamError
from ragsam.evaluation.evaluate import EvaluationOptions, evaluate
from ragsam.utils import ranks

SHAPE = (12, 10, 10)  # (z, y, x)
GEOM = Geometry((10, 10, 12), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _labels(spleen_z: tuple[int, int] | None, liver: bool) -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    if spleen_z is not None:
        a[spleen_z[0]:spleen_z[1], 2:6, 2:6] = 1
    if liver:
        a[8:11, 6:9, 5:9] = 6
    return a


def test_shard_and_unshard_are_inverse_and_balanced() -> None:
    items = list(range(11))
    parts = [ranks.shard(items, ranks.Ranks(r, 3)) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert ranks.unshard(parts, len(items)) == items
    assert ranks.shard(items, ranks.Ranks(0, 1)) == items


def test_alone_nothing_is_distributed(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert ranks.current() == ranks.Ranks(0, 1)
    assert ranks.gather_results(lambda part: [x * 2 for x in part], [1, 2, 3]) == [2, 4, 6]
    assert ranks.on_main(lambda: "written") == "written"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, pred: str, gt: str, out: str, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RAGSAM_JOBS="1")
    try:
        result = evaluate(pred, gt, EvaluationOptions(label_map="btcv", overlays=True), out_dir=out)
        results[rank] = ("ok", repr(result.rows))
    except Exception as exc:
        results[rank] = ("error", f"{type(exc).__name__}: {exc}")
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _run_two(pred: Path, gt: Path, out: Path) -> dict:
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), str(pred), str(gt), str(out), results), nprocs=2)
    return dict(results)


def test_evaluate_under_two_gloo_ranks_equals_one_process(tmp_path: Path, monkeypatch) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for i, (g, p) in enumerate([((2, 6), (4, 8)), ((2, 6), (2, 6)), ((3, 7), None)], start=1):
        write_labels(_labels(g, True), GEOM, gt / f"label000{i}.nii.gz")
        write_labels(_labels(p, i != 2), GEOM, pred / f"000{i}.nii.gz")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    single = evaluate(pred, gt, EvaluationOptions(label_map="btcv", overlays=True), out_dir=tmp_path / "one")
    results = _run_two(pred, gt, tmp_path / "two")
    assert results == {0: ("ok", repr(single.rows)), 1: ("ok", repr(single.rows))}
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "metrics.json":  # it records the command's settings, identical but for out paths
            assert (tmp_path / "two" / rel).read_bytes() == (tmp_path / "one" / rel).read_bytes(), rel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt", "one", "pred", "two"]  # no staging left
    # case 0002 (rank 1's shard) on another grid: both ranks fail with its message, nothing is written
    other = Geometry((10, 10, 12), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_labels(_labels((2, 6), False), other, pred / "0002.nii.gz", force=True)
    results = _run_two(pred, gt, tmp_path / "three")
    assert results[1][0] == "error" and "0002.nii.gz: labels do not cover" in results[1][1]
    assert results[0] == ("error", "RankFailedError: " + results[1][1].replace("InputError: ", "rank 1: "))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt", "one", "pred", "two"]


def test_local_gpu_wraps_round_the_gpus_present(monkeypatch) -> None:
    import torch

    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert ranks.local_gpu() == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert ranks.local_gpu() == 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # CPU only
    assert ranks.local_gpu() == 0
    monkeypatch.delenv("LOCAL_RANK")
    assert ranks.local_gpu() == 0


def test_shard_todo_follows_the_full_case_list_not_the_plan() -> None:
    class Job:
        def __init__(self, case_id: str) -> None:
            self.case_id = case_id

    ids = ["a", "b", "c", "d"]
    # rank 1 planned after rank 0 had finished "a": its todo lacks "a", its share is still b, d
    todo = [Job(c) for c in ["b", "c", "d"]]
    assert [j.case_id for j in ranks.shard_todo(todo, ids, ranks.Ranks(1, 2))] == ["b", "d"]
    assert [j.case_id for j in ranks.shard_todo(todo, ids, ranks.Ranks(0, 2))] == ["c"]


@ranks.fail_together
def _one_exchange_command(fail_rank: int | None, when: str) -> list[int]:
    """A command with one exchange (every rank's rank); ``fail_rank`` raises ``when`` = "before" or "after" it."""
    rank = ranks.current().rank
    if rank == fail_rank and when == "before":
        raise InputError(f"case{rank}.nii.gz", "unreadable")
    got = ranks.gather_objects(rank)
    if rank == fail_rank and when == "after":
        raise InputError(f"case{rank}.nii.gz", "unreadable")
    return got


def _commands_in_turn(plan: list[tuple[int | None, str]]) -> list[str]:
    """Rank target: run :func:`_one_exchange_command` once per ``plan`` entry; each outcome as text."""
    outcomes = []
    for fail_rank, when in plan:
        try:
            outcomes.append(repr(_one_exchange_command(fail_rank, when)))
        except RagsamError as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    return outcomes


def test_a_failure_outside_any_exchange_reaches_every_rank_and_the_next_command_still_lines_up(
        monkeypatch) -> None:
    from two_ranks import run_ranks

    # rank 1 first fails before the process group exists (rank 0 waits in its rendezvous)
    plan = [(1, "before"), (0, "after"), (None, ""), (0, "before"), (1, "after"), (None, "")]
    results = run_ranks(_commands_in_turn, plan, pg_timeout_s=60, deadline_s=50)
    own, peer = "InputError: case{}.nii.gz: unreadable", "RankFailedError: rank {0}: case{0}.nii.gz: unreadable"
    assert results == {
        0: ("ok", [peer.format(1), own.format(0), "[0, 1]", own.format(0), peer.format(1), "[0, 1]"]),
        1: ("ok", [own.format(1), peer.format(0), "[0, 1]", peer.format(0), own.format(1), "[0, 1]"]),
    }
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # alone: the function itself, no exchange
    assert _one_exchange_command(None, "") == [0]
