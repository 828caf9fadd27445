"""Training methods: how each makes a batch's inputs and computes the loss it minimises.

A method is chosen by name (`method_for(cfg)`). Adversarial examples are crafted by `craft`, a function with
`chanscope.attacks.pgd`'s signature; the core passes plain PGD, and the acceleration layer may pass a faster
one with the same arithmetic (`chanscope.accel.training.fast_craft`). Crafting runs in eval mode with frozen
parameters (as the official code); the update's forward runs in train mode through `net` (the DDP wrapper,
where there is one).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from chanscope.attacks.pgd import attack_loss, frozen_eval, pgd
from chanscope.losses import joint_ce, trades_kl

__all__ = ["Method", "CrossEntropy", "Joint", "Trades", "FSRLoss", "method_for", "Craft", "wrong_class"]

Craft = Callable[..., torch.Tensor]  # pgd(model, x, y, *, eps, alpha, steps, loss, random_start, beta, init, autocast)
Autocast = Callable[[], AbstractContextManager]


class Method:
    """A method's two parts. `inputs` makes the images the update trains on; `loss` is what it minimises.

    Args:
        cfg: the TrainConfig (eps, step sizes, steps, betas, natural or adversarial).
        craft: the attack that crafts training examples (default: `pgd`).
    """

    attack_kind = "ce"  # the training attack's loss

    def __init__(self, cfg: Any, craft: Craft = pgd) -> None:
        self.cfg, self.craft = cfg, craft

    def inputs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: Autocast) -> torch.Tensor:
        c = self.cfg
        if not c.adversarial:
            return x
        return self.craft(model, x, y, eps=c.eps, alpha=c.step_size, steps=c.steps, loss=self.attack_kind,
                          beta=c.beta_atk, random_start=c.random_start, autocast=autocast, norm=c.threat_model)

    def loss(self, net: nn.Module, x_in: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             autocast: Autocast) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: Autocast = nullcontext,
                   net: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss to minimise and the logits it came from, for one batch."""
        x_in = self.inputs(model, x, y, autocast)
        return self.loss(model if net is None else net, x_in, x, y, autocast)


class CrossEntropy(Method):
    """standard (natural) and at (PGD-AT, Madry et al. 2018): cross-entropy of the final logits."""

    def loss(self, net, x_in, x, y, autocast):
        with autocast():
            logits = net(x_in, y)
            return F.cross_entropy(logits.float(), y), logits


class Joint(CrossEntropy):
    """cifs and cas: the joint loss of final and probe logits (weight beta), attacked the same way."""

    attack_kind = "joint"

    def loss(self, net, x_in, x, y, autocast):
        with autocast():
            logits, aux = net(x_in, y, return_aux=True)
            return joint_ce(logits.float(), [a.float() for a in aux], y, self.cfg.beta), logits


class Trades(Method):
    """TRADES (Zhang et al. 2019): natural cross-entropy plus trades_beta times the KL of adversarial to
    natural logits; the attack maximises that KL from a small Gaussian start."""

    def inputs(self, model, x, y, autocast):
        c = self.cfg
        if not c.adversarial:
            return x
        with torch.no_grad(), frozen_eval(model), autocast():
            nat_logits = model(x).float()
        return self.craft(model, x, y, eps=c.eps, alpha=c.step_size, steps=c.steps,
                          loss=attack_loss("trades", x_nat_logits=nat_logits), init=x + 0.001 * torch.randn_like(x),
                          autocast=autocast, norm=c.threat_model)

    def loss(self, net, x_in, x, y, autocast):
        with autocast():
            logits_nat = net(x, y)
            logits_adv = net(x_in, y)
            loss = F.cross_entropy(logits_nat, y) + self.cfg.trades_beta * trades_kl(logits_adv, logits_nat).mean()
        return loss, logits_adv


def wrong_class(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The highest-scoring class other than y (FSR's target for the non-robust head)."""
    return logits.detach().masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).argmax(1)


class FSRLoss(Method):
    """FSR (Kim et al., CVPR 2023), as the official code: PGD on the final cross-entropy crafts the inputs;
    the loss is CE(final, y) + lam_sep (CE(robust head, y) + CE(non-robust head, y')) + lam_rec CE(recalibrated
    head, y), y' the highest-scoring wrong class of the final logits."""

    def loss(self, net, x_in, x, y, autocast):
        with autocast():
            logits, heads = net(x_in, y, return_heads=True)
        aux, nr = heads[0].logits, heads[0].nonrobust
        c = self.cfg
        ce = F.cross_entropy
        loss = (ce(logits.float(), y) + c.lam_sep * (ce(aux[0].float(), y) + ce(nr.float(), wrong_class(logits, y)))
                + c.lam_rec * ce(aux[1].float(), y))
        return loss, logits


_BY_LOSS: dict[str, type[Method]] = {"ce": CrossEntropy, "joint": Joint, "trades": Trades, "fsr": FSRLoss}


def method_for(cfg: Any, craft: Craft = pgd) -> Method:
    """The method object of cfg.method (via its loss: METHODS in chanscope.train.config)."""
    return _BY_LOSS[cfg.loss](cfg, craft)
