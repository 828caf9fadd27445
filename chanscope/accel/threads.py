"""How a process shares the CPU: a setting of the process, made by whoever starts it, never on import.

Idle OpenMP threads that spin keep every parallel region waiting for a thread the scheduler has parked, on a
CPU that other jobs share (docs/benchmarks.md, "Sharing the CPU"; bench/shared_cpu.py). OpenMP reads its wait
policy once, when torch first loads, so `share_cpu` must run before that: the `chanscope` command calls it
first, the series starts its seed processes with it, and a notebook or script calls it before importing torch.
numpy's OpenBLAS threads spin the same way; chanscope's numpy work (bootstrap intervals) is small matrices,
which one thread does fastest. A variable the user set is left alone.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["SHARE_CPU", "share_cpu"]

SHARE_CPU = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1"}


def share_cpu(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Give `env` (None: this process's environment) the sharing settings it does not set itself; returns it.
    In this process it works only before torch (and numpy) load their thread pools."""
    env = os.environ if env is None else env
    for k, v in SHARE_CPU.items():
        env.setdefault(k, v)
    return env
