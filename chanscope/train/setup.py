"""What a training run starts from: its data (with the held-out validation split), its model, a warm start."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from chanscope.checkpoint import model_from_checkpoint, read_checkpoint
from chanscope.data import ImageData, balanced_subset, check_classes, load_data
from chanscope.errors import ChanscopeError
from chanscope.models import create_model

__all__ = ["Split", "carve_validation", "prepare_data", "build_model", "load_init"]


@dataclass
class Split:
    """The held-out validation images carved from the training set, and how to find them again."""

    x: torch.Tensor
    y: torch.Tensor
    record: dict[str, Any]


def carve_validation(data: ImageData, n: int, seed: int) -> Split:
    """Take n class-balanced seeded images out of data's training set (in place) and return them."""
    if n == 0:
        return Split(data.x_train[:0], data.y_train[:0], {"n": 0})
    if n > len(data.y_train) // 2:
        raise ChanscopeError(f"`val_n`={n} would take over half of the {len(data.y_train)} training images; "
                             "use a smaller validation split")
    idx = balanced_subset(data.y_train, n, data.num_classes, seed)
    keep = torch.ones(len(data.y_train), dtype=torch.bool)
    keep[idx] = False
    split = Split(data.x_train[idx], data.y_train[idx],
                  {"n": len(idx), "seed": seed, "from": "training set, before the subset",
                   "indices_sha256": hashlib.sha256(idx.numpy().tobytes()).hexdigest()})
    data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]
    data.notes.append(f"validation split of {len(idx)} training images held out (seed {seed})")
    return split


def prepare_data(cfg) -> tuple[ImageData, Split]:
    """cfg's data, its validation split carved out first, then the class-balanced training subset."""
    data = load_data(cfg.data, cfg.data_root, cfg.download, subset=None, seed=cfg.seed)
    check_classes(data)
    val = carve_validation(data, cfg.val_n, cfg.seed)
    if cfg.subset is not None:
        n = cfg.subset
        if cfg.preset and n >= len(data.y_train):  # a preset's subset never exceeds the data: said, not silent
            said = (f"the preset's subset of {n} is more than the {len(data.y_train)} training images left after "
                    f"the validation split: all {len(data.y_train)} are used")
            data.notes.append(said)
            data.warnings.append(said)
            n = None
        if n is not None:
            idx = balanced_subset(data.y_train, n, data.num_classes, cfg.seed)
            data.x_train, data.y_train = data.x_train[idx], data.y_train[idx]
            data.notes.append(f"class-balanced training subset of {len(idx)} (seed {cfg.seed})")
    return data, val


def build_model(cfg, data: ImageData) -> nn.Module:
    mean, std = data.channel_stats()
    return create_model(cfg.arch, num_classes=data.num_classes, in_channels=data.channels, mean=mean, std=std,
                        **cfg.model_kwargs())


def load_init(model: nn.Module, path: str) -> None:
    """Copy the weights of the checkpoint at `path` (same arch, width, method and classes) into `model`."""
    src = model_from_checkpoint(read_checkpoint(path), path)
    own, other = model.state_dict(), src.state_dict()
    bad = [k for k in own if k not in other or other[k].shape != own[k].shape]
    if bad or set(other) - set(own):
        raise ChanscopeError(f"init {path}: arch or class-count mismatch ({getattr(src, 'arch', '?')} "
                             f"{getattr(src, 'model_kwargs', {})}; first differing key {(bad or ['?'])[0]}); "
                             "give a checkpoint of the same arch, width, method and data")
    model.load_state_dict(other)
