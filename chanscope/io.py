"""Atomic file writes: a stopped run never leaves a half-written checkpoint or CSV behind.

A write that fails (disk full, read-only) raises WriteError, one line for the CLI, and the file that
was there is left as it was.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from chanscope.errors import ChanscopeError

__all__ = ["WriteError", "atomic_write_bytes", "atomic_torch_save", "atomic_write_json", "atomic_write_csv", "versions",
           "read_json"]


class WriteError(ChanscopeError, OSError):
    """A file could not be written; still an OSError, so callers that skip optional writes (caches) still can."""


class _Recording:
    """A file that remembers the OSError of a failed write: torch.save turns it into a RuntimeError
    ('unexpected pos ...') that no longer says the disk is full."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _write_error(path: Path, cause: OSError) -> WriteError:
    full = cause.errno in (errno.ENOSPC, errno.EDQUOT)
    hint = "free disk space" if full else "check the folder's permissions or pick another"
    err = WriteError(f"cannot write {str(path)!r} ({cause.strerror or cause}); {hint}, then run again (a training "
                     "run continues with `resume`); the file that was there is kept")
    err.errno = cause.errno
    return err


def _file_mode() -> int:
    """The mode an ordinary open() would give a new file: 0666 less the umask (mkstemp makes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path: Path, write) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    rec = None
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            rec = _Recording(f)
            write(rec)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = e if isinstance(e, OSError) else getattr(rec, "error", None)
        if cause is not None and not isinstance(e, ChanscopeError):
            raise _write_error(path, cause) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: Path) -> dict:
    """A JSON object from a run folder, or {} where the file is missing, unreadable or not a JSON object
    (reports and figures then leave out what it would have said)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # ValueError covers JSONDecodeError and UnicodeDecodeError
        return {}
    return obj if isinstance(obj, dict) else {}


def atomic_write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_bytes(path, df.to_csv(index=False).encode())


def versions() -> dict[str, str]:
    """The software a result was made with, for the records every workflow writes."""
    import platform

    import torchvision

    from chanscope._version import __version__

    return {"chanscope": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
