"""Device choice in one place: CUDA when present, CPU otherwise, `--device` overrides."""

from __future__ import annotations

import torch

from chanscope.errors import ChanscopeError

__all__ = ["pick_device"]


def pick_device(name: str | None = None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ChanscopeError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ChanscopeError(f"device {name!r} asked for but CUDA is not available; use `device` cpu")
    return dev
