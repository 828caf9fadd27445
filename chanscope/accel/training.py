"""The training attack, faster with the same arithmetic: BatchNorm folded into the convolutions (`fold`) and,
on CUDA, each iteration replayed from a captured CUDA graph (`graphed`). Wraps the core's `pgd` from
outside: `fast_craft(cfg)` has pgd's signature and is handed to a training method as its `craft`."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn

from chanscope.accel.fold import folded
from chanscope.accel.graphed import graphed_pgd
from chanscope.attacks.pgd import pgd
from chanscope.train.methods import Craft, method_for

__all__ = ["fast_craft", "batch_loss"]


def fast_craft(cfg: Any) -> Craft:
    """pgd for cfg's training attack, on a BatchNorm-folded twin (cfg.fold_bn) and, on CUDA with
    cfg.cuda_graphs, from CUDA graphs; torch.compile'd training keeps the plain attack."""
    fold = cfg.fold_bn and not cfg.compile

    def craft(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> torch.Tensor:
        graphs = (cfg.cuda_graphs and x.is_cuda and not cfg.compile and isinstance(kw.get("loss"), str)
                  and kw.get("init") is None and kw.get("norm", "linf") == "linf")  # the graphs step under L-inf
        with folded(model, keep=graphs) if fold else nullcontext(model) as atk:
            if graphs:
                kw.pop("autocast", None)
                kw.pop("norm", None)
                return graphed_pgd(atk, x, y, bf16=cfg.uses_bf16(x.device.type), **kw)
            return pgd(atk, x, y, **kw)

    return craft


def batch_loss(cfg: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast=nullcontext,
               net: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's loss and logits as `chanscope train` computes them (method of cfg, fast attack)."""
    return method_for(cfg, fast_craft(cfg)).batch_loss(model, x, y, autocast, net)
