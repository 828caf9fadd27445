"""The CPU allocator mode: "reuse" really avoids the page faults of re-allocating large tensors, "system"
(also after "reuse") really keeps glibc's behaviour. The CLI's side (default, record, bad mode) is in
test_train.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chanscope.accel.cpu_alloc import _glibc, check_cpu_alloc
from chanscope.errors import ChanscopeError

_PROBE = """
import resource, sys, torch
from chanscope.accel.cpu_alloc import set_cpu_alloc
for mode in sys.argv[1].split(","):  # applied in order
    assert set_cpu_alloc(mode) == mode
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(1)  # torch's own start-up allocations before counting
for _ in range(3):  # a 48 MiB tensor, allocated and freed (the heap settles in two rounds)
    torch.ones(48 * 2**18).sum()
before = faults()
for _ in range(5):
    torch.ones(48 * 2**18).sum()  # the same size again, as each batch does
print((faults() - before) / 5)
"""


def _faults_per_tensor(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_glibc() is None, reason="mallopt needs glibc (Linux)")
@pytest.mark.slow  # a full-width step in a subprocess
def test_reuse_keeps_large_blocks_mapped():
    """48 MiB is 12,288 pages of 4 KiB: glibc maps (and the kernel faults in) each of them afresh for every
    new tensor above its 32 MiB mmap limit; with "reuse" the second and later tensors find them mapped."""
    system, reuse = _faults_per_tensor("system"), _faults_per_tensor("reuse")
    assert system > 10_000, system
    assert reuse < 0.1 * system, (reuse, system)
    assert _faults_per_tensor("reuse,system") > 10_000  # switching back restores glibc's limits


def test_unknown_mode_is_one_line():
    assert check_cpu_alloc("reuse") == "reuse"
    with pytest.raises(ChanscopeError, match="unknown CPU allocator mode 'fast'; known: reuse, system"):
        check_cpu_alloc("fast")
