"""The one rule for sharding work over torchrun ranks, and the collectives around it.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) a command's cases are
split by rank: rank ``r`` of ``W`` takes items ``r, r + W, r + 2W, ...`` of the
command's sorted case list (:func:`shard`), so the split is deterministic and
balanced to one case. Each rank writes only its own per-case outputs; results
that go into shared files are gathered on rank 0 (:func:`gather_results`), which
writes those files. A rank that fails sends its error instead of its results, so
every rank learns of it in the same collective and the command fails on all
ranks with that message (no rank waits at a barrier for a dead peer).

Every collective here is the same one (an all-gather of ``(status, payload)``), so a
rank that fails *outside* an exchange (a missing input, a model that does not load,
before the process group even exists) can still meet its peers: a command wrapped in
:func:`fail_together` sends that error in one more exchange, which is the one the other
ranks wait in, and they fail at once with its message instead of at the gloo timeout.

Without torchrun (``WORLD_SIZE`` unset or 1) nothing here imports torch: one
rank, every item, results returned as they are.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ragsam.errors import RagsamError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_SHARED = "_ragsam_sent_to_ranks"  # set on an exception the other ranks already know of


@dataclass(frozen=True)
class Ranks:
    """This process's place among the torchrun processes (``world == 1``: alone)."""

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the shared files."""
        return self.rank == 0


def current() -> Ranks:
    """``Ranks`` from torchrun's ``RANK`` / ``WORLD_SIZE`` (0 / 1 without them)."""
    return Ranks(int(os.environ.get("RANK", "0")), max(1, int(os.environ.get("WORLD_SIZE", "1"))))


def shard(items: Sequence[T], ranks: Ranks) -> list[T]:
    """This rank's items: every ``world``-th one starting at ``rank`` (input order kept)."""
    return list(items[ranks.rank::ranks.world])


def shard_todo(todo: Sequence[T], all_ids: Sequence[str], ranks: Ranks) -> list[T]:
    """This rank's share of ``todo`` (jobs with a ``case_id``), decided on the FULL case
    list ``all_ids`` rather than on ``todo``: ranks plan at slightly different times, and a
    fast rank's finished case must not shift the slower ranks' shares (each case belongs
    to one rank whatever the others have done)."""
    mine = set(shard(list(all_ids), ranks))
    return [job for job in todo if job.case_id in mine]


def unshard(parts: Sequence[Sequence[T]], total: int) -> list[T]:
    """Put the per-rank lists of :func:`shard` back into the original order."""
    out: list[Any] = [None] * total
    for rank, part in enumerate(parts):
        out[rank::len(parts)] = list(part)
    return out


def local_gpu() -> int:
    """The GPU index of this process under torchrun: ``LOCAL_RANK`` modulo the GPUs present
    (several processes share a GPU when there are fewer GPUs than processes); 0 alone."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local == 0:
        return 0
    import torch

    return local % max(1, torch.cuda.device_count())


class RankFailedError(RagsamError):
    """Another rank failed; its message is this one's."""


def _ensure_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")  # results are Python objects: CPU collectives


def _exchange(payload: tuple[str, Any]) -> list[tuple[str, Any]]:
    """All-gather this rank's ``(status, payload)``: every rank's, in rank order (the only collective)."""
    import torch.distributed as dist

    _ensure_group()
    gathered: list[Any] = [None] * current().world
    dist.all_gather_object(gathered, payload)
    return gathered


def _send_failure(exc: BaseException) -> None:
    """Send this rank's error in one exchange, once: the exchange the other ranks wait in.

    An exception already known to every rank (sent, or a :class:`RankFailedError`) is not
    sent again, so each rank takes part in the same number of exchanges."""
    if getattr(exc, _SHARED, False):
        return
    with contextlib.suppress(Exception):  # a dead peer: this rank's own error still stands
        _exchange(("error", f"rank {current().rank}: {exc}"))
    _mark_sent(exc)


def _mark_sent(exc: BaseException) -> BaseException:
    with contextlib.suppress(AttributeError):
        setattr(exc, _SHARED, True)
    return exc


def _run_and_exchange(work: Callable[[], Any]) -> list[Any]:
    """Run ``work`` here and all-gather every rank's outcome; raise if any rank failed."""
    try:
        payload: tuple[str, Any] = ("ok", work())
    except Exception as exc:  # sent to the other ranks, then raised here
        _send_failure(exc)
        raise
    gathered = _exchange(payload)
    failed = [msg for status, msg in gathered if status == "error"]
    if failed:
        raise _mark_sent(RankFailedError(failed[0]))
    return [value for _, value in gathered]


def fail_together(fn: F) -> F:
    """Decorate a command that runs on every rank so that a rank failing anywhere in it fails
    every rank, promptly, with its message.

    Under torchrun a rank that raises outside an exchange (before its first one included)
    sends its error in one more exchange: the other ranks wait in their next exchange, meet
    it there and raise :class:`RankFailedError` with ``"rank r: <message>"``. A rank that
    finishes joins one last exchange, so a peer failing after the last shared step still
    reaches it. Every rank must call ``fn`` (the same number of exchanges on each). Alone:
    ``fn`` itself.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current().world == 1:
            return fn(*args, **kwargs)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            _send_failure(exc)
            raise
        barrier()
        return result

    return wrapper  # type: ignore[return-value]


def gather_results(fn: Callable[[list[T]], list[Any]], items: Sequence[T]) -> list[Any]:
    """Run ``fn`` on this rank's shard of ``items``; every rank gets all results in item
    order. Alone, it is ``fn(list(items))``.

    Raises:
        The rank's own exception, or :class:`RankFailedError` with the first failed
        rank's message on every other rank.
    """
    ranks = current()
    if ranks.world == 1:
        return fn(list(items))
    parts = _run_and_exchange(lambda: fn(shard(items, ranks)))
    return unshard(parts, len(items))


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only (shared files); every rank returns once it is done and
    fails with its error if it failed. Returns ``fn()`` on rank 0, ``None`` elsewhere."""
    ranks = current()
    if ranks.world == 1:
        return fn()
    results = _run_and_exchange(lambda: fn() if ranks.is_main else None)
    return results[0] if ranks.is_main else None


def from_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only (shared files, as :func:`on_main`) and return its value on
    every rank (alone: ``fn()``)."""
    ranks = current()
    if ranks.world == 1:
        return fn()
    return _run_and_exchange(lambda: fn() if ranks.is_main else None)[0]


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` alone)."""
    if current().world == 1:
        return [obj]
    return _run_and_exchange(lambda: obj)


def merge_outcomes(recorder: Any) -> None:
    """Give every rank the outcomes of all ranks' cases (a ``CaseRecorder`` of
    ``ragsam.utils.case_runner``: its ``results`` and ``failures`` lists), so each
    rank returns, or fails with, the same list as a one-process run. Cases found
    finished (``skip``) are recorded by every rank and kept once."""
    if current().world == 1:
        return
    parts = gather_objects((recorder.results, recorder.failures))
    seen: set[str] = set()
    results = []
    for part_results, _ in parts:
        for case_id, result in part_results:
            if case_id not in seen:
                seen.add(case_id)
                results.append((case_id, result))
    recorder.results = results
    recorder.failures = [failure for _, part_failures in parts for failure in part_failures]


def barrier() -> None:
    """Wait for every rank (nothing alone); fails, as every exchange, when a rank failed."""
    if current().world > 1:
        _run_and_exchange(lambda: None)
