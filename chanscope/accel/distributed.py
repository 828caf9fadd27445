"""torch.distributed in one place: started by torchrun (WORLD_SIZE, RANK, LOCAL_RANK in the environment).

Training uses DistributedDataParallel with each rank taking a strided share of every global batch;
evaluation and activation studies split the test set into contiguous shards and all-reduce their sums,
so 2 ranks give the statistics of 1. Only rank 0 writes files and reports progress.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["setup", "setup_device", "rank", "world_size", "is_main", "all_reduce_sum", "shard", "gather_cat", "barrier"]


def setup(device: torch.device | None = None) -> bool:
    """Initialise the process group when launched by torchrun; returns True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def setup_device(name: str | None) -> tuple[torch.device, bool]:
    """The device of this process (under torchrun on CUDA: its LOCAL_RANK GPU) and whether it is one of
    several ranks; `name` as `--device` takes it."""
    from chanscope.device import pick_device

    device = pick_device(name)
    distributed = setup(device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return device, distributed


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """In-place sum over ranks (no-op on one process)."""
    if not active():
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def shard(n: int) -> slice:
    """This rank's contiguous part of range(n); concatenating the parts in rank order gives range(n)."""
    r, w = rank(), world_size()
    per = -(-n // w)
    return slice(min(n, r * per), min(n, (r + 1) * per))


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a per-rank tensor over ranks in rank order (CPU objects, any lengths)."""
    if not active():
        return t
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts).to(t.device)
