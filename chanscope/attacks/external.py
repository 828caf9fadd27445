"""Thin adapters around maintained implementations: AutoAttack and Square (torchattacks' port), and the
AutoAttack authors' own code (pyautoattack) as the reference to check the port against.

We do not rewrite them. Our models return logits from `model(x)` and compute CIFS relevance under
`torch.enable_grad()`, so they work inside these libraries' `no_grad` clean-accuracy passes. AutoAttack's
dynamic-model check would flag CIFS (its forward takes a gradient): that is expected, and the adaptive
attacks are the answer to it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from chanscope.errors import ChanscopeError

__all__ = ["autoattack", "autoattack_reference", "square"]


def _torchattacks():
    try:
        import torchattacks
    except ImportError:
        raise ChanscopeError("AutoAttack and Square need torchattacks; pip install torchattacks") from None
    return torchattacks


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


_NAMES = {"linf": "Linf", "l2": "L2"}  # the libraries' spelling of our threat models


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int = 0,
               norm: str = "linf") -> torch.Tensor:
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square 5000), Croce & Hein 2020."""
    ta = _torchattacks()
    atk = ta.AutoAttack(model, norm=_NAMES[norm], eps=eps, version="standard", n_classes=_num_classes(model, x),
                        seed=seed)
    return atk(x, y).detach()


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int,
           seed: int = 0, norm: str = "linf") -> torch.Tensor:
    """Square Attack (Andriushchenko et al. 2020), a score-based black-box attack."""
    ta = _torchattacks()
    return ta.Square(model, norm=_NAMES[norm], eps=eps, n_queries=queries, n_restarts=1, seed=seed)(x, y).detach()


def autoattack_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                         seed: int = 0, norm: str = "linf") -> torch.Tensor:
    """AutoAttack, standard version, by its authors' code (the `pyautoattack` package)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise ChanscopeError("the reference AutoAttack (aa-ref) needs pyautoattack; pip install pyautoattack"
                             ) from None
    aa = AutoAttack(model, eps=eps, norm=_NAMES[norm], version="standard", seed=seed, device=x.device)
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(y))
    return x_adv.detach().to(x.device)
