"""Deterministic, resumable, shardable data order.

Epoch ``e`` visits the training slices in the order of
``torch.randperm(n, generator=seeded(seed, e))``. With ``W`` processes the order
is padded by wrap-around to a multiple of ``W`` and process ``r`` takes
positions ``r, r + W, r + 2W, ...`` (what ``DistributedSampler`` does), so every
process runs the same number of batches. The stream's position (epoch, next
batch) is a pair of ints saved in the checkpoint: a resumed run continues with
exactly the batch an uninterrupted run would have drawn next.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                shuffle: bool = True) -> list[tuple[int, int]]:
    """This process's ``(position, dataset index)`` pairs for ``epoch``.

    ``position`` is the place in the global (padded) epoch order; it is unique
    across processes and keys the sample's augmentation.
    """
    if n <= 0:
        return []
    if shuffle:
        gen = torch.Generator().manual_seed(int(seed) * 7919 + int(epoch))
        order = torch.randperm(n, generator=gen).tolist()
    else:
        order = list(range(n))
    total = -(-n // world) * world
    order = (order * (-(-total // n)))[:total]
    return [(pos, order[pos]) for pos in range(rank, total, world)]


@dataclass
class Batch:
    """One micro-batch of the stream.

    Attributes:
        epoch: the epoch it belongs to. positions: epoch positions of its samples.
        images: float (B, C, S, S). labels: int64 (B, S, S).
    """

    epoch: int
    positions: list[int]
    images: torch.Tensor
    labels: torch.Tensor


class BatchStream:
    """Endless micro-batches over epochs, resumable from ``(epoch, batch)``.

    Args:
        dataset: items ``{"image": (C, S, S), "label": (S, S), ...}``.
        indices: the dataset indices to train on (e.g. minus held-out slices).
        batch_size: samples per micro-batch (the last batch of an epoch may be smaller).
        seed, rank, world: see :func:`epoch_order`.
        num_workers: DataLoader workers (loading only; order and augmentation
            do not depend on it).
    """

    def __init__(self, dataset: Dataset, indices: list[int], batch_size: int, seed: int,
                 rank: int = 0, world: int = 1, num_workers: int = 0) -> None:
        if not indices:
            raise ValueError("no training slices")
        self.dataset = dataset
        self.indices = list(indices)
        self.batch_size = batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.num_workers = num_workers
        self.epoch = 0
        self.batch = 0  # the NEXT batch to deliver within self.epoch

    def batches_per_epoch(self) -> int:
        """Micro-batches per epoch on this process."""
        per_rank = -(-len(self.indices) // self.world)
        return -(-per_rank // self.batch_size)

    def state_dict(self) -> dict[str, int]:
        """Position of the next batch (plain ints, checkpoint-safe)."""
        return {"epoch": self.epoch, "batch": self.batch, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the saved position (same world size required)."""
        if int(state.get("world", 1)) != self.world:
            raise ValueError(f"checkpoint was written with {state.get('world')} processes, "
                             f"now {self.world}: data order would differ")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def __iter__(self) -> Iterator[Batch]:
        while True:
            pairs = epoch_order(len(self.indices), self.seed, self.epoch, self.rank, self.world)
            chunks = [pairs[i:i + self.batch_size] for i in range(0, len(pairs), self.batch_size)]
            todo = chunks[self.batch:]
            loader = DataLoader(self.dataset, batch_sampler=[[self.indices[i] for _, i in c] for c in todo],
                                num_workers=self.num_workers,
                                persistent_workers=False)
            epoch = self.epoch
            for k, (chunk, item) in enumerate(zip(todo, loader, strict=True)):
                # Advance before yielding: a checkpoint taken after this batch resumes at the next.
                self.batch = len(chunks) - len(todo) + k + 1
                if self.batch >= len(chunks):
                    self.epoch, self.batch = epoch + 1, 0
                yield Batch(epoch, [p for p, _ in chunk], item["image"].float(), item["label"].long())
            if self.epoch == epoch:  # empty remainder (resumed exactly at an epoch end)
                self.epoch, self.batch = epoch + 1, 0
