"""What the bench scripts share: side-by-side timing (warm up every function, then run them round robin so
machine noise hits all of them alike, and report medians), a real batch, and one training step."""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


@functools.cache
def embedded():
    """The embedded real CIFAR-10 subset, decoded once per process."""
    from chanscope.data import load_data

    return load_data("embedded")


def embedded_batch(n: int, dev: torch.device, split: str = "train",
                   start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [start, start + n) of the embedded subset, in [0, 1] on `dev`, and their labels."""
    d = embedded()
    x, y = (d.x_train, d.y_train) if split == "train" else (d.x_test, d.y_test)
    return (x[start:start + n].float() / 255).to(dev), y[start:start + n].to(dev)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, dev: torch.device,
                      warmup: int | None = None) -> dict[str, list[float]]:
    """Seconds of every call of each function, run round robin after warm-up calls (CUDA: 2, for
    cudnn.benchmark's autotuning; else 1): entry i of every list comes from the same round."""
    for _ in range(warmup if warmup is not None else (2 if dev.type == "cuda" else 1)):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync(dev)
            t = time.perf_counter()
            f()
            sync(dev)
            times[k].append(time.perf_counter() - t)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, dev: torch.device,
                        warmup: int | None = None) -> dict[str, float]:
    """Median seconds per call of each function, measured interleaved (`interleaved_times`)."""
    return medians(interleaved_times(fns, repeats, dev, warmup))


def paired_ratios(times: dict[str, list[float]], slow: str, fast: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of times[slow][i] / times[fast][i]: each round's two calls ran back
    to back, so a machine that slows down for a while (a shared host) moves both and their ratio less."""
    r = [a / b for a, b in zip(times[slow], times[fast])]
    return statistics.median(r), min(r), max(r)


def training_step(cfg, model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                  autocast: Callable[[], object], forward: torch.nn.Module | None = None) -> Callable[[], None]:
    """One `chanscope train` step of `cfg`'s method on a fixed batch (the loop's batch_loss, then the update)."""
    from chanscope.accel.training import batch_loss

    def step() -> None:
        model.train()
        loss, _ = batch_loss(cfg, model if forward is None else forward, x, y, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def count_ops(fn: Callable[[], object]) -> int:
    """Operators one call of `fn` dispatches below autograd (forward and backward): the host's work per
    step, a count that does not depend on the machine (on a GPU, roughly the kernel launches)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            _Count.n += 1
            return func(*args, **(kwargs or {}))

    with _Count():
        fn()
    return _Count.n


_HELP = {"arch": "registry name", "width": "channel multiplier", "batch": "batch size",
         "batches": "batch sizes (comma list) or batches per pass", "widths": "widths (comma list)",
         "steps": "PGD steps", "repeats": "interleaved repeats (medians)"}


def bench_parser(doc: str, **defaults: object) -> argparse.ArgumentParser:
    """The bench scripts' shared options with each script's own defaults (typed as the default), plus --device."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in defaults.items():
        ap.add_argument(f"--{name}", type=type(default), default=default, help=f"{_HELP[name]} (default {default})")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    return ap


def _proc_status_kb(key: str) -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> float:
    """Reset the kernel's resident-set high-water mark (Linux) and return the current RSS in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    rss = _proc_status_kb("VmRSS")
    return rss / 1024 if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MB (since start or the last `reset_peak_rss`)."""
    hwm = _proc_status_kb("VmHWM")
    return hwm / 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Worker:
    """A step run in a process of its own (a process-wide setting such as the CPU allocator differs per side):
    `cmd` starts a script that calls `serve(step)`; each call of the Worker runs one step there and waits, so
    `interleaved_times` can time workers like functions."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.reply("ready")

    def reply(self, word: str) -> str:
        """Read the worker's lines up to the one starting with `word`; returns the rest of that line."""
        for line in self.proc.stdout:
            if line.startswith(word):
                return line[len(word):].strip()
        raise RuntimeError(f"worker exited with {self.proc.wait()} before saying {word!r}")

    def ask(self, what: str) -> str:
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self.reply(what)

    def __call__(self) -> None:
        self.ask("step")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def serve(step: Callable[[], None], report: Callable[[], str] = lambda: "") -> None:
    """The worker's side: "step" runs a step and answers "step"; "report" answers "report <report()>". Ends
    when the parent closes stdin."""
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            step()
            print("step", flush=True)
        else:
            print(f"report {report()}", flush=True)
