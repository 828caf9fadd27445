"""Training and attack losses, defined once for both (the official code had two diverging copies)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["joint_ce", "cw_margin", "trades_kl"]


def joint_ce(logits: torch.Tensor, aux: list[torch.Tensor], y: torch.Tensor, beta: float = 2.0,
             reduction: str = "mean") -> torch.Tensor:
    """CIFS/CAS joint loss: (CE(final) + beta / L * sum_l CE(probe_l)) * 3 / (beta + 1).

    With no probes (L = 0) it is CE(final) * 3 / (beta + 1), as in the official code.
    """
    loss = F.cross_entropy(logits, y, reduction=reduction)
    if aux:
        probe = sum(F.cross_entropy(a, y, reduction=reduction) for a in aux)
        loss = loss + beta / len(aux) * probe
    return loss * 3.0 / (beta + 1.0)


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example CW margin to maximise: max_{j != y} z_j - z_y (positive means misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def trades_kl(logits_adv: torch.Tensor, logits_nat: torch.Tensor) -> torch.Tensor:
    """Per-example KL(softmax(nat) || softmax(adv)), TRADES' robustness term."""
    return F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_nat, 1), reduction="none").sum(1)
