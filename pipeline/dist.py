"""Running under torchrun: the process's place in the job and the few collectives the stages use.

``torchrun --nproc_per_node N --no-python structkd annotate|distill ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; structkd reads them (no flag), joins the process group (nccl on GPUs, gloo on CPUs) and
each stage splits its work by rank: annotate deals shards, distill deals shards and averages
gradients with DistributedDataParallel. A single process (no torchrun) is a world of one, and every
helper here is then a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """This process's World from torchrun's environment (a world of one without it)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"torchrun environment: RANK / WORLD_SIZE / LOCAL_RANK must be integers ({err})") from None
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"torchrun environment: RANK={rank} is not in [0, WORLD_SIZE={size})")
    return World(rank, size, local)


def device_for(world: World, name: str) -> torch.device:
    """``auto``: this rank's GPU (cuda:LOCAL_RANK) when CUDA is present, else the CPU; ``cuda``
    under torchrun means this rank's GPU too; any other name as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def init(world: World, device: torch.device) -> bool:
    """Join the job's process group once (nccl for CUDA devices, gloo otherwise); True when this
    call created it (then the caller ends it with ``finish``)."""
    if not world.distributed or dist.is_initialized():
        return False
    # every rank's HF tokenizer would start a thread pool of one thread per core: N ranks
    # oversubscribe the cores (measured: 2 annotate ranks on 2 cores 0.82x one rank, 1.77x without)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank,
                            world_size=world.size)
    return True


def finish(world: World, created: bool) -> None:
    """Leave the process group ``init`` created, after a last barrier: a process that exits with
    the group still up can abort in the backend's teardown (seen: SIGABRT on a gloo rank that had
    nothing left to do)."""
    if created and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast(world: World, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable Python object of the job's own making)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(world: World, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def first_error(world: World, error: BaseException | None) -> str | None:
    """The first rank's error message (in rank order) on every rank, or None when all succeeded:
    a rank that fails alone must not leave the others waiting at the next collective."""
    messages = gather(world, None if error is None else f"rank {world.rank}: {error}")
    return next((m for m in messages if m is not None), None)
