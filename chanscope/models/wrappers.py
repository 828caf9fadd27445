"""Wrappers that make any image classifier look like chanscope's own models from the outside: images in [0, 1]
in, logits out, normalisation inside."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["Normalized", "inner"]


class Normalized(nn.Module):
    """`model((x - mean) / std)`: a model that expects normalised images, taking images in [0, 1], so that
    attacks work in pixel units. Layer names stay the inner model's (`inner`)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, *args, **kwargs):
        return self.model((x - self.mean) / self.std, *args, **kwargs)


def inner(model: nn.Module) -> nn.Module:
    """The model inside a Normalized wrapper (the model itself otherwise): its module names are the layers'."""
    return model.model if isinstance(model, Normalized) else model
