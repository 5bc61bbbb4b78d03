"""torchrun / DDP set-up: one process per device, gloo on CPU, NCCL on CUDA; rank 0 does the I/O."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from retrieval.device import pick_device
from retrieval.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: `rank` of `world_size` processes, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> DistEnv:
        """One process on `device`: what every non-torchrun caller (benchmarks, ENN-ℓ units, tests) runs as."""
        return cls(rank=0, world_size=1, local_rank=0, device=torch.device(device))

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics, curves and runs validation."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """torchrun (and torch.distributed.launch) export WORLD_SIZE/RANK/LOCAL_RANK to every process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed(requested_device: str = "auto") -> DistEnv:
    """Join the process group when torchrun started us (gloo for CPU, NCCL for CUDA); else a single process.

    Under torchrun each process takes `cuda:LOCAL_RANK` when the device resolves to CUDA.
    """
    device = pick_device(requested_device)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistEnv.single(device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    log.info("rank %d/%d on %s (%s)", rank, world_size, device, backend)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op in a single process)."""
    if env.distributed:
        dist.barrier()


def broadcast_object(env: DistEnv, value: object) -> object:
    """Rank 0's `value` on every rank (e.g. a stop decision or a validation score)."""
    if not env.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across_ranks(env: DistEnv, value: float) -> float:
    """The mean of a per-rank scalar over all ranks (for logging)."""
    if not env.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / env.world_size


def shutdown(env: DistEnv) -> None:
    """Leave the process group (end of training, or error)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
