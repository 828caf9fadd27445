"""How the process gets and returns large CPU blocks: a speed setting of the process, not of the arithmetic.

glibc serves every request above its mmap threshold (which it never raises above 32 MiB) with a fresh mmap and
unmaps it on free, so each such tensor costs the kernel a page fault and a zero-fill per 4 KiB page. A
full-width ResNet-18 at the paper's batch 128 makes first-stage tensors of exactly 32 MiB (128 x 64 x 32 x 32
float32, plus the allocator's header: just over the limit), hundreds per CIFS step, each a round of page
faults and kernel time (measured in docs/benchmarks.md, `bench/cpu_alloc.py`).

"reuse" (opt-in, Linux with glibc) asks glibc through `mallopt` to serve every request from its heap
(M_MMAP_MAX = 0) and to keep freed memory there (M_TRIM_THRESHOLD very large), so the next batch's tensors
land on pages that are already mapped. It costs resident memory: the process keeps its high-water mark,
and the heap's fragmentation raises that mark (`bench/vs_official.py --shipped`, `bench/cpu_alloc.py`).
"system" (the default) leaves glibc's defaults
and meets the peak-memory goal against the official code. Other C libraries and platforms have no such
switch; there both modes are "unavailable". The setting is process-wide, so a benchmark that compares two
codes in one process gives it to both (it helps the official CIFS code more than ours: docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import functools
import sys

from chanscope.errors import ChanscopeError

__all__ = ["CPU_ALLOC_MODES", "DEFAULT_CPU_ALLOC", "check_cpu_alloc", "current_cpu_alloc", "set_cpu_alloc"]

CPU_ALLOC_MODES = ("reuse", "system")
DEFAULT_CPU_ALLOC = "system"  # the CLI's default: glibc's own behaviour, the lower peak RSS
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults
_KEEP = 2**31 - 1  # M_TRIM_THRESHOLD is an int: never give the heap's top back
_state = {"mode": "system"}


def check_cpu_alloc(mode: str) -> str:
    if mode not in CPU_ALLOC_MODES:
        raise ChanscopeError(f"unknown CPU allocator mode {mode!r}; known: {', '.join(CPU_ALLOC_MODES)}")
    return mode


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)  # the C library this process already runs on (no search of the system's paths)
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only (musl's mallopt does nothing)
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


def set_cpu_alloc(mode: str) -> str:
    """Apply `mode` to this process; returns what holds now: the mode, or "unavailable" without glibc.
    Switching back to "system" restores glibc's default limits and gives free heap pages back (malloc_trim);
    glibc's dynamic mmap threshold stays off after any mallopt call (glibc has no call to turn it back on)."""
    check_cpu_alloc(mode)
    libc = _glibc()
    if libc is None:
        _state["mode"] = "unavailable"
        return "unavailable"
    if mode == "reuse":
        ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP)
    elif _state["mode"] == "reuse":
        ok = libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
        libc.malloc_trim(0)
    else:
        ok = True  # never changed: glibc's own (dynamic) defaults still hold
    _state["mode"] = mode if ok else "unavailable"
    return _state["mode"]


def current_cpu_alloc() -> str:
    """The mode this process runs with ("system" until `set_cpu_alloc` is called)."""
    return _state["mode"]
