"""One epoch of training, and the per-epoch measurement on a fixed set of images."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from chanscope.attacks.pgd import frozen_eval, pgd
from chanscope.attacks.suite import correct, follow_mask
from chanscope.train.methods import Autocast, Method

__all__ = ["EpochStats", "NonFiniteLoss", "Stopped", "train_one_epoch", "subset_correct"]


class NonFiniteLoss(Exception):
    """The loss became inf or nan; the caller keeps the last good state."""

    def __init__(self, value: float) -> None:
        super().__init__(f"loss became {value}")
        self.value = value


class Stopped(Exception):
    """`should_stop` said yes after a batch; the stats so far are in the EpochStats passed in."""


@dataclass
class EpochStats:
    """Running sums of one epoch (kept across a resume inside the epoch)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


def train_one_epoch(model: nn.Module, method: Method, loader, opt: torch.optim.Optimizer, stats: EpochStats, *,
                    autocast: Autocast, net: nn.Module | None = None,
                    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    on_batch: Callable[[int, float], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> EpochStats:
    """Train `model` for the batches `loader` still has in this epoch, adding to `stats`.

    method: makes each batch's inputs and loss; net: the module the update runs through (DDP, compiled);
    prepare: applied to each batch's images first (e.g. a memory format); on_batch(seen, loss) after each
    update; should_stop() after each batch: True raises Stopped. Raises NonFiniteLoss before an update whose
    loss is inf or nan.
    """
    model.train()
    for xb, yb in loader:
        if prepare is not None:
            xb = prepare(xb)
        loss, logits = method.batch_loss(model, xb, yb, autocast, net)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(value)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats.loss_sum += value * len(yb)
        stats.correct += (logits.argmax(1) == yb).sum().item()
        stats.seen += len(yb)
        if on_batch:
            on_batch(stats.seen, value)
        if should_stop is not None and should_stop():
            raise Stopped
    return stats


def subset_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg, batch_size: int = 250) -> tuple[int, int]:
    """How many of (x, y) the model classifies correctly, natural and under cfg's per-epoch PGD (on the joint
    loss for CIFS/CAS/FSR models, no random start; through CIFS's relevance and mask end to end, the attack
    an evaluator would run, so a checkpoint is never selected for hiding its gradient)."""
    loss = "joint" if cfg.feature_select != "none" else "ce"
    nat = adv = 0
    with frozen_eval(model), follow_mask(model):
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            nat += correct(model, xb, yb).sum().item()
            xa = pgd(model, xb, yb, eps=cfg.eps, alpha=cfg.eval_step_size, steps=cfg.eval_steps,
                     loss=loss, beta=cfg.beta_atk, random_start=False, norm=cfg.threat_model)
            adv += correct(model, xa, yb).sum().item()
    return nat, adv
