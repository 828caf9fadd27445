"""Consoles, error exit and progress bars shared by every command."""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(quiet=os.environ.get("RANK", "0") != "0")  # under torchrun only rank 0 prints
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code)


def progress() -> Progress:
    """Bar with count, a free-text field (rate, loss), elapsed time and ETA."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console)


def handle_errors(fn):
    """Turn a library ChanscopeError into one red line on stderr and exit code 2 (no traceback)."""
    import functools

    from chanscope.errors import ChanscopeError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ChanscopeError as e:
            raise fail(str(e)) from None

    return wrapper
