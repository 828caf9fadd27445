"""Consoles, error exit and progress display shared by every command.

On a terminal (or in a notebook) progress is a live rich bar with an ETA. Off a terminal (a log file, CI,
a pipe) a live bar would only appear at the end, so progress becomes plain lines at an interval, and tables
get a wide console instead of being cut to 80 columns.
"""

from __future__ import annotations

import os
import re
import time

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LINE_EVERY = float(os.environ.get("CHANSCOPE_PROGRESS_EVERY", "30"))  # seconds between plain progress lines
_WIDE = 200  # columns of a console that is not a terminal (COLUMNS overrides)

console = Console(quiet=os.environ.get("RANK", "0") != "0")  # under torchrun only rank 0 prints
err_console = Console(stderr=True)
for _c in (console, err_console):
    if not _c.is_terminal and not _c.is_jupyter and "COLUMNS" not in os.environ:
        _c.width = _WIDE


def interactive() -> bool:
    return console.is_terminal or console.is_jupyter


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class LineProgress:
    """The part of rich's Progress the commands use, printed as plain lines: one per task when it starts,
    then at most one every `every` seconds, and one when it completes; each with count, rate-based ETA and
    elapsed time."""

    def __init__(self, out: Console, every: float = LINE_EVERY) -> None:
        self.console, self.every = out, every
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def add_task(self, description: str, total: float | None = None, **fields) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": 0, "info": fields.get("info", ""),
                           "t0": time.time(), "printed": 0.0, "done": False}
        return tid

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, info: str | None = None, **_) -> None:
        t = self.tasks[task_id]
        if description is not None and description != t["description"]:  # a new epoch: a new line and clock
            t.update(description=description, t0=time.time(), printed=0.0, done=False)
        for k, v in (("completed", completed), ("total", total), ("info", info)):
            if v is not None:
                t[k] = v
        now = time.time()
        finished = t["total"] is not None and t["completed"] >= t["total"]
        if (finished and not t["done"]) or now - t["printed"] >= self.every:
            t["printed"], t["done"] = now, finished
            self.console.print(self._line(t, now), highlight=False, markup=False)

    def reset(self, task_id: int, *, total: float | None = None, description: str | None = None, **_) -> None:
        """A new round of the task (a new epoch): its count and clock start again."""
        t = self.tasks[task_id]
        t.update(completed=0, t0=time.time(), printed=0.0, done=False)
        if total is not None:
            t["total"] = total
        if description is not None:
            t["description"] = description

    @staticmethod
    def _line(t: dict, now: float) -> str:
        done, total, secs = t["completed"], t["total"], now - t["t0"]
        count = f"{int(done)}/{int(total)}" if total else f"{int(done)}"
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        eta = ""
        if total and 0 < done < total and secs >= 1.0:  # no estimate from the first instant of a task
            eta = f", eta {_clock(secs * (total - done) / done)}"
        info = f"  {t['info']}" if t["info"] else ""
        return f"{t['description']}: {count}{pct}{info}  elapsed {_clock(secs)}{eta}"


def progress() -> Progress | LineProgress:
    """A live bar with count, a free-text field (rate, loss), elapsed time and ETA on a terminal; plain
    progress lines elsewhere."""
    if not interactive():
        return LineProgress(console)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console)


# library messages name options as the Python API spells them, in backquotes (`data_root`, `classes_by`='x');
# on the command line they are flags (--data-root, --classes-by x)
_OPTION = re.compile(r"`([a-z][a-z0-9_]*)`(?:=(?:'([^']*)'|(\S+)))?")


def as_flags(message: str) -> str:
    """A library message with its option names as this CLI's flags."""
    def flag(m: re.Match) -> str:
        value = m.group(2) if m.group(2) is not None else m.group(3)
        return "--" + m.group(1).replace("_", "-") + (f" {value}" if value is not None else "")
    return _OPTION.sub(flag, message)


class StageDisplay:
    """Progress of a multi-stage workflow (reproduce, series): a task per progress label, a line per stage
    event, and the stage now running (for the one-line message after Ctrl-C)."""

    def __init__(self) -> None:
        self.bar = progress()
        self.tasks: dict[str, int] = {}
        self.current: str | None = None

    def on_progress(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total, info="")
        self.bar.update(self.tasks[label], completed=done, total=total)

    def on_stage(self, name: str, status: str, secs: float) -> None:
        self.current = name if status == "running" else None
        self.bar.console.print(f"[bold]{name}[/]: {status}" + (f" ({secs:.0f}s)" if secs else ""), highlight=False)

    def run(self, out, work, *, time_limit: float | None = None, **options):
        """Call a staged workflow with this display's callbacks and `time_limit` (minutes) in seconds; after
        Ctrl-C or a cut training: the one line that says how to continue."""
        from chanscope.workflows.training import TrainInterrupted

        try:
            with self.bar:
                return work(out, **options, progress=self.on_progress, on_stage=self.on_stage,
                            time_limit=time_limit * 60 if time_limit is not None else None)
        except (TrainInterrupted, KeyboardInterrupt):
            raise self.interrupted(out) from None

    def interrupted(self, out) -> typer.Exit:
        where = f" during {self.current!r}" if self.current else ""
        return fail(f"interrupted{where}; finished stages and trained epochs are kept in {out}: run the same "
                    "command again to continue", code=130)


def handle_errors(fn):
    """Turn a library ChanscopeError into one red line on stderr and exit code 2 (no traceback)."""
    import functools

    from chanscope.errors import ChanscopeError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ChanscopeError as e:
            raise fail(as_flags(str(e))) from None

    return wrapper
