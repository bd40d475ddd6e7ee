"""Multi-process training through ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m ragsam.cli.main train ...`` sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; :func:`setup` reads them, initialises the process
group (NCCL on CUDA, Gloo on CPU) and picks the device. Only rank 0 writes
files; validation is sharded by case and its counts are summed over ranks so
that every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ragsam.utils.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits. ``world == 1`` means no process group."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """A process group is in use."""
        return self.world > 1


def env_world() -> tuple[int, int, int]:
    """``(rank, world, local_rank)`` from the torchrun environment (0, 1, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local_rank


def setup(device_pref: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun; pick the device."""
    rank, world, local_rank = env_world()
    device = resolve_device(device_pref, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank, device)


def cleanup(info: DistInfo) -> None:
    """Tear down the process group this module created."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks (in place on a copy); identity without a group."""
    if not info.distributed:
        return tensor
    out = tensor.detach().clone().to(info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_mean(values: list[float], info: DistInfo) -> list[float]:
    """Mean of a few scalars over ranks (for logging)."""
    if not info.distributed:
        return values
    t = all_reduce_sum(torch.tensor(values, dtype=torch.float64), info)
    return (t / info.world).tolist()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's value of ``flag`` on every rank."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op without a group)."""
    if info.distributed:
        dist.barrier()
