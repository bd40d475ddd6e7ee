"""Deterministic, resumable, shardable data order, loaded and augmented in worker processes.

Epoch ``e`` visits the training slices in the order of
``torch.randperm(n, generator=seeded(seed, e))``. With ``W`` processes the order
is padded by wrap-around to a multiple of ``W`` and process ``r`` takes
positions ``r, r + W, r + 2W, ...`` (what ``DistributedSampler`` does), so every
process runs the same number of batches. The stream's position (epoch, next
batch) is a pair of ints saved in the checkpoint: a resumed run continues with
exactly the batch an uninterrupted run would have drawn next.

One ``DataLoader`` serves every epoch: its batch sampler runs on from the
stream's position through all later epochs, so worker processes start once per
iteration of the stream (and are kept, ``persistent_workers``, when the stream
is iterated again). Loading *and* augmentation run in the collate function,
i.e. inside the workers; the augmentation is a pure function of (seed, epoch,
position), so a run is bit-identical whatever ``num_workers`` is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from ragsam.errors import InputError
from ragsam.training.augment import AugmentConfig, augment_batch

MAX_AUTO_WORKERS = 4
PREFETCH_BATCHES = 2  # per worker: enough to hide loading behind one step, little memory


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


def resolve_num_workers(requested: int, device: torch.device) -> int:
    """DataLoader workers for ``data.num_workers`` (``-1`` = auto).

    Auto is 0 on CPU (workers would compete with the training threads for the
    same cores) and ``min(4, cpus - 1)`` on CUDA, where ``cpus`` are the cores
    this process may use divided by the processes torchrun started on this node
    (``LOCAL_WORLD_SIZE``), so that 8 ranks on 16 cores do not start 32 workers.
    """
    if requested >= 0:
        return requested
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_AUTO_WORKERS, per_rank - 1))


@dataclass
class Batch:
    """One micro-batch of the stream.

    Attributes:
        epoch: the epoch it belongs to. positions: epoch positions of its samples.
        images: float (B, C, S, S). labels: int64 (B, S, S) (augmented when the stream augments).
    """

    epoch: int
    positions: list[int]
    images: torch.Tensor
    labels: torch.Tensor


class _Key(NamedTuple):
    """Where a sample sits: batch ``batch`` of ``chunks`` in ``epoch``, at ``position``."""

    epoch: int
    batch: int
    chunks: int
    position: int
    index: int


class _Keyed(Dataset):
    """``dataset[key.index]`` paired with its key, so the collate function knows epoch and position.

    An :class:`InputError` (e.g. an unreadable cache file) comes back as
    ``{"input_error": (path, problem)}``: raised in a worker, the DataLoader would
    turn it into a ``RuntimeError`` carrying a traceback instead of the one-line message.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: _Key) -> tuple[_Key, dict[str, Any]]:
        try:
            return key, self.dataset[key.index]
        except InputError as exc:
            return key, {"input_error": (exc.path, exc.problem)}


class _Batches:
    """Endless batch sampler: the keys of every batch from ``start = (epoch, batch)`` on.

    Runs in the main process, ahead of training by the DataLoader's prefetch;
    the stream's own position only advances when a batch is handed out.
    """

    def __init__(self, indices: list[int], batch_size: int, seed: int, rank: int, world: int) -> None:
        self.indices, self.batch_size = indices, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.start = (0, 0)

    def __iter__(self) -> Iterator[list[_Key]]:
        epoch, first = self.start
        while True:
            pairs = epoch_order(len(self.indices), self.seed, epoch, self.rank, self.world)
            chunks = [pairs[i:i + self.batch_size] for i in range(0, len(pairs), self.batch_size)]
            for b in range(first, len(chunks)):
                yield [_Key(epoch, b, len(chunks), p, self.indices[i]) for p, i in chunks[b]]
            epoch, first = epoch + 1, 0


@dataclass(frozen=True)
class BatchCollate:
    """Collate keyed samples into one batch dict and augment it (runs in the workers).

    Args:
        augment: augmentation settings (``None`` = none).
        seed: the run seed; sample ``i`` is augmented with the generator of
            ``(seed, epoch, position_i)`` (:func:`ragsam.training.augment.augment_batch`).
    Returns (from ``__call__``):
        ``{"epoch", "batch", "chunks": int, "positions": list[int], "images": float (B, C, S, S),
        "labels": int64 (B, S, S)}``.
    """

    augment: AugmentConfig | None
    seed: int

    def __call__(self, samples: list[tuple[_Key, dict[str, Any]]]) -> dict[str, Any]:
        failed = [s["input_error"] for _, s in samples if "input_error" in s]
        if failed:
            return {"input_error": failed[0]}
        keys = [k for k, _ in samples]
        images = torch.stack([s["image"] for _, s in samples]).float()
        labels = torch.stack([s["label"] for _, s in samples]).long()
        positions = [k.position for k in keys]
        if self.augment is not None:
            images, labels = augment_batch(images, labels, self.augment, self.seed, keys[0].epoch, positions)
        return {"epoch": keys[0].epoch, "batch": keys[0].batch, "chunks": keys[0].chunks,
                "positions": positions, "images": images, "labels": labels}


class BatchStream:
    """Endless micro-batches over epochs, resumable from ``(epoch, batch)``.

    Args:
        dataset: items ``{"image": (C, S, S), "label": (S, S), ...}``.
        indices: the dataset indices to train on (e.g. minus held-out slices).
        batch_size: samples per micro-batch (the last batch of an epoch may be smaller).
        seed, rank, world: see :func:`epoch_order`.
        num_workers: DataLoader worker processes (>= 0; see :func:`resolve_num_workers`).
            Order and augmentation do not depend on it.
        augment: augment each batch in the workers (``None`` = plain slices).
        pin_memory: page-locked batches (for ``.to(cuda, non_blocking=True)``).

    Only the latest iterator of a stream is valid (they share one DataLoader);
    :meth:`close` stops the workers.
    """

    def __init__(self, dataset: Dataset, indices: list[int], batch_size: int, seed: int,
                 rank: int = 0, world: int = 1, num_workers: int = 0, augment: AugmentConfig | None = None,
                 pin_memory: bool = False) -> None:
        if not indices:
            raise ValueError("no training slices")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0 (resolve -1 with resolve_num_workers)")
        self.dataset = dataset
        self.indices = list(indices)
        self.batch_size = batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.num_workers = num_workers
        self.augment = augment
        self.pin_memory = pin_memory
        self.epoch = 0
        self.batch = 0  # the NEXT batch to deliver within self.epoch
        self._sampler = _Batches(self.indices, batch_size, seed, rank, world)
        self._loader: DataLoader | None = None
        self._generation = 0

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

    def _get_loader(self) -> DataLoader:
        if self._loader is None:
            workers = self.num_workers
            self._loader = DataLoader(
                _Keyed(self.dataset), batch_sampler=self._sampler, num_workers=workers,
                collate_fn=BatchCollate(self.augment, self.seed), pin_memory=self.pin_memory,
                persistent_workers=workers > 0, prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
                # its own generator: iterating must not draw from the global RNG the model may use
                generator=torch.Generator().manual_seed(int(self.seed)))
        return self._loader

    def close(self) -> None:
        """Stop the worker processes (the stream can be iterated again afterwards)."""
        self._generation += 1
        loader, self._loader = self._loader, None
        # DataLoader has no public way to stop persistent workers; without this they
        # would live until the garbage collector happens to free the loader.
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def __iter__(self) -> Iterator[Batch]:
        self._generation += 1
        generation = self._generation
        self._sampler.start = (self.epoch, self.batch)
        batches = iter(self._get_loader())  # endless: the sampler runs on through every epoch
        while True:
            if generation != self._generation:  # the shared loader now serves a newer iterator
                raise RuntimeError("this BatchStream was iterated again or closed; use its newest iterator")
            item = next(batches)
            if "input_error" in item:
                raise InputError(*item["input_error"])
            # Advance before yielding: a checkpoint taken after this batch resumes at the next.
            epoch, nxt = item["epoch"], item["batch"] + 1
            self.epoch, self.batch = (epoch + 1, 0) if nxt >= item["chunks"] else (epoch, nxt)
            yield Batch(epoch, item["positions"], item["images"], item["labels"])
