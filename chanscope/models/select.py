"""Channel selection modules: CIFS (Yan et al., ICML 2021) and CAS (Bai et al., ICLR 2021).

Both take a block's output features (N, C, H, W), return the features multiplied by a per-sample channel
mask, and keep their auxiliary ("probe") logits in `last_logits` for the joint loss. The label that
drives the training-time mask is set by the owning model for one forward only (`label`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CIFS", "CAS", "SelectBlock", "PROBES", "TRAIN_LABELS"]

PROBES = ("nonlinear", "linear")
TRAIN_LABELS = ("true", "pred")


class GlobalAvgFlatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def make_probe(kind: str, channels: int, num_classes: int, hidden: int = 128) -> nn.Sequential:
    """linear: GAP + Linear(C, K); nonlinear: GAP + Linear(C, h) + Softplus(beta=5) + Linear(h, K)."""
    if kind == "linear":
        return nn.Sequential(GlobalAvgFlatten(), nn.Linear(channels, num_classes))
    if kind == "nonlinear":
        return nn.Sequential(GlobalAvgFlatten(), nn.Linear(channels, hidden), nn.Softplus(beta=5),
                             nn.Linear(hidden, num_classes))
    raise ValueError(f"unknown probe kind {kind!r}; known: {', '.join(PROBES)}")


class _Selector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.label: torch.Tensor | None = None  # set by the model for one training forward
        self.last_logits: torch.Tensor | None = None
        self.last_mask: torch.Tensor | None = None


class CIFS(_Selector):
    """Channel-wise Importance-based Feature Selection.

    Relevance of channel k: gradient of (logit of the top-1 class + logits of the next top-k-1
    predicted classes) of the probe w.r.t. the channel, summed over positions. The top-1 class is the
    true label in training (train_label="true", the paper) and the prediction otherwise. Mask:
    softmax over channels, so it is non-negative and sums to 1 per sample.
    """

    def __init__(self, channels: int, num_classes: int, probe: str = "nonlinear", hidden: int = 128,
                 topk: int = 2, train_label: str = "true") -> None:
        super().__init__()
        if train_label not in TRAIN_LABELS:
            raise ValueError(f"unknown train_label {train_label!r}; known: {', '.join(TRAIN_LABELS)}")
        self.probe = make_probe(probe, channels, num_classes, hidden)
        self.probe_kind, self.topk, self.train_label = probe, topk, train_label

    def relevance(self, feat: torch.Tensor, label: torch.Tensor | None = None,
                  create_graph: bool = False) -> torch.Tensor:
        """Per-channel relevance g (N, C) on a detached copy of `feat` (the mask is trained through the
        probe's parameters only, as in the official code)."""
        with torch.enable_grad():  # AutoAttack/RobustBench call forward under no_grad
            f = feat.detach().requires_grad_(True)
            logits = self.probe(f)
            k = min(self.topk, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            if label is not None:
                chosen = torch.cat([label.view(-1, 1), top[:, 1:k]], dim=1)  # label + runner-ups
            else:
                chosen = top
            score = logits.gather(1, chosen).sum()
            (grad,) = torch.autograd.grad(score, f, create_graph=create_graph)
        return grad.sum(dim=(2, 3))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        use_label = self.training and self.label is not None and self.train_label == "true"
        g = self.relevance(feat, self.label if use_label else None,
                           create_graph=torch.is_grad_enabled() and self.training)
        mask = F.softmax(g, dim=1)
        self.last_mask = mask.detach()
        self.last_logits = self.probe(feat)
        return feat * mask[:, :, None, None]


class CAS(_Selector):
    """Channel-wise Activation Suppressing: mask = the auxiliary classifier's weight row of the true
    class (training) or of the predicted class (otherwise)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        logits = self.fc(feat.mean(dim=(2, 3)))
        cls = self.label if (self.training and self.label is not None) else logits.argmax(1)
        mask = self.fc.weight[cls]
        self.last_mask = mask.detach()
        self.last_logits = logits
        return feat * mask[:, :, None, None]


class SelectBlock(nn.Module):
    """A residual block followed by a channel selector: hooks on `.block` see unmasked features,
    hooks on the SelectBlock itself see masked ones."""

    def __init__(self, block: nn.Module, select: _Selector) -> None:
        super().__init__()
        self.block = block
        self.select = select

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.select(self.block(x))
