"""A training run's folder state: opening it (new or resumed), the RNG, Ctrl-C as a flag, and the snapshot
that `last.pt` carries so a resumed run continues to the batch."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from chanscope.checkpoint import read_checkpoint
from chanscope.errors import ChanscopeError
from chanscope.train.epoch import EpochStats

__all__ = ["open_run", "sigint_flag", "snapshot", "restore", "Progress"]


def open_run(out: Path, resume: bool) -> dict[str, Any] | None:
    """Create the run folder (new run) or read the state to continue (resume); None for a new run."""
    last = out / "last.pt"
    state = None
    if resume:
        if not last.is_file():
            raise ChanscopeError(f"`resume`: {last} does not exist; start without `resume`")
        state = read_checkpoint(last)
        if "train_state" not in state:
            raise ChanscopeError(f"`resume`: {last} holds no training state; start a new `out`")
    elif last.exists():
        raise ChanscopeError(f"{out} already holds a run; add `resume` to continue it or pick another `out`")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ChanscopeError(f"cannot create run folder {str(out)!r} ({e.strerror}); pick another `out`") from None
    return state


@contextmanager
def sigint_flag() -> Iterator[dict[str, bool]]:
    """Turn the first Ctrl-C into a flag checked between batches, so state is saved consistently; a second
    Ctrl-C interrupts at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):  # noqa: ARG001
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


class Progress:
    """Where a run stands: epochs' rows, the best held-out metric so far, the running epoch's sums."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.start_epoch, self.best_metric, self.best_epoch = 0, -1.0, 0
        self.stats = EpochStats()


def snapshot(epoch: int, p: Progress, opt, sched, loader) -> dict[str, Any]:
    """Everything `restore` needs to continue after `epoch` complete epochs (and p.stats of the next)."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "loader": loader.state_dict(), "rng": rng, "metrics": p.rows, "best_metric": p.best_metric,
            "best_epoch": p.best_epoch, "partial": dict(vars(p.stats))}


def restore(state: dict[str, Any], model, opt, sched, loader, milestones: list[int]) -> Progress:
    """Load a snapshot into the run's objects; returns where the run stands."""
    model.load_state_dict(state["state_dict"])
    ts = state["train_state"]
    opt.load_state_dict(ts["optimizer"])
    sched.load_state_dict(ts["scheduler"])
    sched.milestones = Counter(milestones)  # epochs may have been extended on resume
    loader.load_state_dict(ts["loader"])
    torch.set_rng_state(ts["rng"]["torch"])
    if "cuda" in ts["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ts["rng"]["cuda"])
    p = Progress()
    p.rows = [dict(r) for r in ts["metrics"]]
    p.start_epoch, p.best_metric, p.best_epoch = ts["epoch"], ts["best_metric"], ts["best_epoch"]
    p.stats = EpochStats(**ts["partial"])
    return p
