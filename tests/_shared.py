"""Helpers several test files use: CIFAR-10's class names, the CLI in a process of its own, one-line text."""

from __future__ import annotations

import os
import subprocess
import sys

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`chanscope ARGS` as a user runs it (a terminal's width, not the test runner's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "chanscope.cli.app", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def one_line(text: str) -> str:
    return " ".join(text.split())
