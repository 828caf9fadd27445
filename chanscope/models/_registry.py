"""Model registry: architectures register by decorator and are created by name (timm's pattern)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from chanscope.errors import ChanscopeError

__all__ = ["register_model", "create_model", "list_models", "is_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; the name and kwargs are stored on it so a checkpoint can rebuild it.

    Example:
        >>> m = create_model("resnet18", width=0.25, feature_select="cifs")
        >>> m(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if name not in _MODELS:
        raise ChanscopeError(f"unknown arch {name!r}; known: {', '.join(list_models())}")
    try:
        model = _MODELS[name](**kwargs)
    except (TypeError, ValueError) as e:
        raise ChanscopeError(f"bad options for arch {name!r}: {e}") from None
    model.arch = name
    model.model_kwargs = dict(kwargs)
    return model
