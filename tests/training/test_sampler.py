"""Seeded, sharded, resumable data order."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import Dataset

from ragsam.errors import InputError
from ragsam.training.augment import AugmentConfig, augment_batch
from ragsam.training.sampler import BatchStream, epoch_order, resolve_num_workers


class _Numbers(Dataset):
    def __len__(self) -> int:
        return 100

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((1, 2, 2), float(i)), "label": torch.full((2, 2), i)}


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(10, seed=1, epoch=0)
    assert sorted(i for _, i in a) == list(range(10)) and [p for p, _ in a] == list(range(10))
    assert a == epoch_order(10, seed=1, epoch=0)
    assert a != epoch_order(10, seed=1, epoch=1) and a != epoch_order(10, seed=2, epoch=0)


def test_shards_are_disjoint_and_padded_like_distributed_sampler():
    full = [i for _, i in epoch_order(10, 0, 0)]
    r0, r1, r2 = (epoch_order(10, 0, 0, rank=r, world=3) for r in range(3))
    assert len(r0) == len(r1) == len(r2) == 4  # 10 padded to 12 by wrap-around
    padded = full + full[:2]
    for r, shard in enumerate((r0, r1, r2)):
        assert [i for _, i in shard] == padded[r::3]
    assert set(full[0::3]) & set(full[1::3]) == set()
    positions = sorted(p for r in (r0, r1, r2) for p, _ in r)
    assert positions == list(range(12))


def test_stream_resumes_at_the_exact_next_batch():
    indices = list(range(3, 20))  # 17 samples, batch 4 -> 5 batches per epoch (last has 1)
    stream = BatchStream(_Numbers(), indices, batch_size=4, seed=5)
    assert stream.batches_per_epoch() == 5
    it = iter(stream)
    seen = [next(it) for _ in range(7)]
    assert seen[4].images.shape[0] == 1 and seen[5].epoch == 1
    epoch0 = sorted(int(v) for b in seen[:5] for v in b.images[:, 0, 0, 0])
    assert epoch0 == indices
    state = stream.state_dict()
    assert state == {"epoch": 1, "batch": 2, "world": 1}
    expected = [next(it) for _ in range(6)]
    resumed = BatchStream(_Numbers(), indices, batch_size=4, seed=5)
    resumed.load_state_dict(state)
    got = [b for _, b in zip(range(6), resumed, strict=False)]
    for e, g in zip(expected, got, strict=True):
        assert e.epoch == g.epoch and e.positions == g.positions and torch.equal(e.images, g.images)


class _Pids(Dataset):
    """Images carry the id of the process that loaded them."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((1, 2, 2), float(os.getpid())), "label": torch.full((2, 2), i)}


class _Ramp(Dataset):
    """Distinct, asymmetric slices so that every rotation / flip changes them."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict:
        img = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8) / 192.0 + i
        return {"image": img, "label": (torch.arange(64).view(8, 8) + i) % 5}


def test_workers_load_and_augment_exactly_like_the_main_process():
    cfg = AugmentConfig()
    data = _Ramp()
    main, workers = (BatchStream(data, list(range(12)), batch_size=5, seed=3, num_workers=w, augment=cfg)
                     for w in (0, 2))
    try:
        got = [b for _, b in zip(range(8), workers, strict=False)]  # 3 batches per epoch: into epoch 2
        ref = [b for _, b in zip(range(8), main, strict=False)]
    finally:
        workers.close()
    changed = 0
    for g, r in zip(got, ref, strict=True):
        assert (g.epoch, g.positions) == (r.epoch, r.positions)
        assert torch.equal(g.images, r.images) and torch.equal(g.labels, r.labels)
        # ... and both are augment_batch of the raw slices, keyed by (seed, epoch, position)
        order = dict(epoch_order(12, 3, g.epoch))
        raw_i = torch.stack([data[order[p]]["image"] for p in g.positions])
        raw_l = torch.stack([data[order[p]]["label"] for p in g.positions])
        want_i, want_l = augment_batch(raw_i, raw_l, cfg, 3, g.epoch, g.positions)
        assert torch.equal(g.images, want_i) and torch.equal(g.labels, want_l)
        changed += int(not torch.equal(g.images, raw_i))
    assert changed >= 4  # the augmentation really ran (p = 0.75 per slice)
    assert [b.epoch for b in got] == [0, 0, 0, 1, 1, 1, 2, 2] and workers.state_dict()["batch"] == 2


def test_one_set_of_workers_serves_every_epoch_and_close_stops_them():
    stream = BatchStream(_Pids(), list(range(10)), batch_size=4, seed=0, num_workers=2)
    it = iter(stream)
    pids = {int(v) for _ in range(3 * stream.batches_per_epoch()) for v in next(it).images.flatten()}
    assert len(pids) == 2 and os.getpid() not in pids  # 3 epochs, still the same 2 workers
    state = stream.state_dict()
    again = iter(stream)  # persistent workers: a new iteration reuses them
    assert {int(v) for v in next(again).images.flatten()} <= pids
    with pytest.raises(RuntimeError, match="iterated again"):
        next(it)  # the older iterator would now read the newer one's batches
    assert state == {"epoch": 3, "batch": 0, "world": 1} and stream.state_dict() == {"epoch": 3, "batch": 1,
                                                                                      "world": 1}
    stream.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped


def test_auto_workers_are_zero_on_cpu_and_bounded_on_cuda(monkeypatch):
    cuda = torch.device("cuda")
    assert resolve_num_workers(-1, torch.device("cpu")) == 0 and resolve_num_workers(3, cuda) == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cpus, expected in ((16, 4), (3, 2), (1, 0)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert resolve_num_workers(-1, cuda) == expected
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 ranks share 16 cores: 4 each, one for the rank itself
    assert resolve_num_workers(-1, cuda) == 3
    with pytest.raises(ValueError, match="num_workers=-1"):
        BatchStream(_Pids(), [0], batch_size=1, seed=0, num_workers=-1)


class _Broken(_Numbers):
    def __getitem__(self, i: int) -> dict:
        if i == 7:
            raise InputError(f"/cache/cases/{i:04d}", "unreadable cached slices; rerun `ragsam prepare`")
        return super().__getitem__(i)


def test_bad_cache_file_in_a_worker_is_the_same_one_line_input_error():
    for workers in (0, 2):
        stream = BatchStream(_Broken(), list(range(10)), batch_size=4, seed=0, num_workers=workers)
        batches = iter(stream)
        try:
            with pytest.raises(InputError) as exc:
                for _ in range(stream.batches_per_epoch()):  # slice 7 is in one of them
                    next(batches)
        finally:
            stream.close()
        assert str(exc.value) == "/cache/cases/0007: unreadable cached slices; rerun `ragsam prepare`"
