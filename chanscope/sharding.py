"""How a computation over a set of images is split across processes. The core computes on one process
(`ONE_PROCESS`); `chanscope.accel.distributed` has the same five functions for torchrun, and the workflows pass
it in, so the core never imports the speed layer."""

from __future__ import annotations

import torch

__all__ = ["ONE_PROCESS"]


class _OneProcess:
    """Every image on this process: `shard` is everything, gathering and summing are the identity."""

    @staticmethod
    def shard(n: int) -> slice:
        return slice(0, n)

    @staticmethod
    def gather_cat(t: torch.Tensor) -> torch.Tensor:
        return t

    @staticmethod
    def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
        return None

    @staticmethod
    def is_main() -> bool:
        return True

    @staticmethod
    def world_size() -> int:
        return 1


ONE_PROCESS = _OneProcess()
