"""Projected gradient descent under L-inf (Madry et al. 2018, arXiv:1706.06083).

Every adversarial example stays within eps of its input and inside [0, 1]. The model is put in eval
mode with frozen parameters for the attack and restored afterwards, even on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from chanscope.losses import cw_margin, joint_ce, trades_kl

__all__ = ["pgd", "attack_loss", "frozen_eval", "LOSSES"]

LOSSES = ("ce", "cw", "joint", "trades")
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and requires_grad=False for the duration; both restored in `finally`."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(was_training)


def attack_loss(kind: str, beta: float = 2.0, x_nat_logits: torch.Tensor | None = None) -> LossFn:
    """Per-example loss to maximise.

    ce: cross-entropy of the final logits; cw: CW margin; joint: the CIFS/CAS joint loss (final plus
    probe logits, weight `beta`); trades: KL to the natural logits `x_nat_logits`.
    """
    if kind == "ce":
        return lambda m, x, y: F.cross_entropy(m(x), y, reduction="none")
    if kind == "cw":
        return lambda m, x, y: cw_margin(m(x), y)
    if kind == "joint":
        def _joint(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits, aux = m(x, return_aux=True)
            return joint_ce(logits, aux, y, beta, reduction="none")
        return _joint
    if kind == "trades":
        if x_nat_logits is None:
            raise ValueError("trades loss needs the natural logits")
        return lambda m, x, y: trades_kl(m(x), x_nat_logits)
    raise ValueError(f"unknown attack loss {kind!r}; known: {', '.join(LOSSES)}")


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
        loss: str | LossFn = "ce", random_start: bool = True, beta: float = 2.0,
        init: torch.Tensor | None = None,
        autocast: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
    """L-inf PGD: x_{t+1} = clip_{x, eps}(x_t + alpha * sign(grad loss)).

    Args:
        model: [0,1] images -> logits (with `return_aux` for the joint loss).
        x, y: clean images in [0, 1] (N, C, H, W) and labels (N,).
        eps, alpha, steps: budget, step size, iterations (steps=0 returns the start point).
        loss: a name of LOSSES or a callable (model, x, y) -> per-example loss.
        random_start: uniform start in the eps-ball (global torch RNG); otherwise start at x.
        init: explicit start point (e.g. TRADES' small Gaussian start), projected into the ball.
        autocast: context for the forward passes (training uses bf16 on CUDA: the attack is 10 of 11
            passes of a PGD-10 step); evaluation keeps the default float32, so no precision loss can
            weaken a reported attack. The iterate itself always stays float32.
    Returns:
        x_adv with |x_adv - x|_inf <= eps and 0 <= x_adv <= 1, detached.
    """
    loss_fn = attack_loss(loss, beta) if isinstance(loss, str) else loss
    x = x.detach()
    if init is not None:
        x_adv = init.detach()
    elif random_start:
        x_adv = x + torch.empty_like(x).uniform_(-eps, eps)
    else:
        x_adv = x.clone()
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    with frozen_eval(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with autocast():
                obj = loss_fn(model, x_adv, y).float().sum()
            (grad,) = torch.autograd.grad(obj, x_adv)
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    return x_adv.detach()
