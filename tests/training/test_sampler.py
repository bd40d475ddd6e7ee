"""Seeded, sharded, resumable data order."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ragsam.training.sampler import BatchStream, epoch_order


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
