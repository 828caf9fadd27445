"""Projected gradient descent under L-inf or L2 (Madry et al. 2018, arXiv:1706.06083).

Every adversarial example stays within eps of its input in the threat model's norm and inside [0, 1]. The
model is put in eval mode with frozen parameters for the attack and restored afterwards, even on error.

    L-inf: x_{t+1} = clip_{x, eps}(x_t + alpha * sign(g))
    L2:    x_{t+1} = x + r_eps(x_t + alpha * g / |g|_2 - x),   r_eps(d) = d * min(1, eps / |d|_2)

each followed by clipping to [0, 1] (per example; the L2 ball's projection comes before the box clip, as in
the common implementations, so an example stays inside both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from chanscope.errors import check_threat_model
from chanscope.losses import cw_margin, joint_ce, trades_kl

__all__ = ["pgd", "attack_loss", "frozen_eval", "LOSSES", "distance", "project", "ascent", "ball_start"]

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


def _per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) values shaped to broadcast over `like`'s (N, ...) examples."""
    return v.view(len(v), *([1] * (like.dim() - 1)))


def distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str = "linf") -> torch.Tensor:
    """Per-example distance |x_adv - x| in the norm (N,)."""
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(p=2, dim=1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """x_adv moved into the eps-ball around x in the norm, then into [0, 1]."""
    if norm == "linf":
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    d = x_adv - x
    scale = (eps / distance(x_adv, x, "l2").clamp_min(1e-12)).clamp(max=1.0)
    return (x + d * _per_example(scale, d)).clamp_(0.0, 1.0)


def ascent(grad: torch.Tensor, norm: str = "linf") -> torch.Tensor:
    """The steepest-ascent direction of unit norm: sign(g) under L-inf, g / |g|_2 under L2 (0 where g = 0)."""
    if norm == "linf":
        return grad.sign()
    n = grad.flatten(1).norm(p=2, dim=1)
    return grad / _per_example(n.clamp_min(1e-12), grad)


def ball_start(x: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """A uniform random point of the eps-ball around x (global torch RNG), before the [0, 1] clip."""
    if norm == "linf":
        return x + torch.empty_like(x).uniform_(-eps, eps)
    direction = torch.randn_like(x)
    direction = direction / _per_example(direction.flatten(1).norm(p=2, dim=1), x)
    radius = eps * torch.rand(len(x), device=x.device) ** (1.0 / x[0].numel())  # uniform in volume
    return x + direction * _per_example(radius, x)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
        loss: str | LossFn = "ce", random_start: bool = True, beta: float = 2.0,
        init: torch.Tensor | None = None,
        autocast: Callable[[], AbstractContextManager] = nullcontext, norm: str = "linf") -> torch.Tensor:
    """PGD under the norm's ball (see the module docstring for the two step rules).

    Args:
        model: [0,1] images -> logits (with `return_aux` for the joint loss).
        x, y: clean images in [0, 1] (N, C, H, W) and labels (N,).
        eps, alpha, steps: budget, step size, iterations (steps=0 returns the start point), all in the
            norm's units.
        norm: "linf" or "l2".
        loss: a name of LOSSES or a callable (model, x, y) -> per-example loss.
        random_start: uniform start in the eps-ball (by volume) (global torch RNG); otherwise start at x.
        init: explicit start point (e.g. TRADES' small Gaussian start), projected into the ball.
        autocast: context for the forward passes (training uses bf16 on CUDA: the attack is 10 of 11
            passes of a PGD-10 step); evaluation keeps the default float32, so no precision loss can
            weaken a reported attack. The iterate itself always stays float32.
    Returns:
        x_adv with |x_adv - x| <= eps in the norm and 0 <= x_adv <= 1, detached.
    """
    norm = check_threat_model(norm)
    loss_fn = attack_loss(loss, beta) if isinstance(loss, str) else loss
    x = x.detach()
    if init is not None:
        x_adv = init.detach()
    elif random_start:
        x_adv = ball_start(x, eps, norm)
    else:
        x_adv = x.clone()
    x_adv = project(x_adv, x, eps, norm)
    with frozen_eval(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with autocast():
                obj = loss_fn(model, x_adv, y).float().sum()
            (grad,) = torch.autograd.grad(obj, x_adv)
            x_adv = project(x_adv.detach() + alpha * ascent(grad, norm), x, eps, norm)
    return x_adv.detach()
