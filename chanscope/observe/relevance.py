"""Channel relevance per (class, channel): how much channel k of a layer supports the logit of class c.

gradient:    d logit_c / d (uniform shift of channel k) = sum over positions of d logit_c / d a_k. At the
             penultimate layer (logits = W . mean_hw(a) + b) this is exactly W[c, k].
grad-x-act:  gradient x the channel's spatial mean activation.
ablation:    logit_c(x) - logit_c(x with channel k set to 0).
Positive relevance: PR channel; negative: NR channel. Scores are averaged over the images of class c.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from chanscope.attacks.pgd import frozen_eval
from chanscope.names import RELEVANCE_METHODS
from chanscope.observe.hooks import resolve_layers, tap

__all__ = ["RELEVANCE_METHODS", "LayerRelevance", "RelevanceAccumulator", "relevance_scores"]


class LayerRelevance:
    """One relevance definition bound to one layer of one model (the method checked and the layer found once);
    called on a batch, the (N, C) relevance of each channel to the logit of each image's class y_i."""

    def __init__(self, model: nn.Module, layer: str, method: str = "gradient") -> None:
        if method not in RELEVANCE_METHODS:
            raise ValueError(f"unknown relevance {method!r}; known: {', '.join(RELEVANCE_METHODS)}")
        self.model, self.layer, self.method = model, layer, method
        self.module = resolve_layers(model, [layer])[layer]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _scores(self.model, self.module, self.layer, x, y, self.method)


def relevance_scores(model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor,
                     method: str = "gradient") -> torch.Tensor:
    """(N, C) relevance of each channel of `layer` to the logit of each image's class y_i (one batch; for many,
    bind once with LayerRelevance)."""
    return LayerRelevance(model, layer, method)(x, y)


def _scores(model: nn.Module, module: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor,
            method: str) -> torch.Tensor:
    state: dict = {}

    with frozen_eval(model):
        if method in ("gradient", "grad-x-act"):
            def add_shift(out):
                shape = (out.shape[0], out.shape[1]) + (1,) * (out.ndim - 2)
                shift = torch.zeros(shape, device=out.device, dtype=out.dtype, requires_grad=True)
                state["shift"], state["act"] = shift, out.detach()
                return out + shift

            h = tap(module, layer, add_shift)
            try:
                with torch.enable_grad():
                    logits = model(x)
                    (g,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), state["shift"])
            finally:
                h.remove()
            g = g.flatten(1)
            if method == "grad-x-act":
                a = state["act"]
                g = g * (a.mean(dim=(2, 3)) if a.ndim == 4 else a)
            return g.float()

        # ablation: one forward per channel, the channel zeroed by the hook
        def zero_channel(out):
            k = state.get("k")
            if k is None:
                state["channels"] = out.shape[1]
                return out
            out = out.clone()
            out[:, k] = 0
            return out

        h = tap(module, layer, zero_channel)
        try:
            with torch.no_grad():
                state["k"] = None
                base = model(x).gather(1, y[:, None]).squeeze(1)
                drops = []
                for k in range(state["channels"]):
                    state["k"] = k
                    drops.append(base - model(x).gather(1, y[:, None]).squeeze(1))
        finally:
            h.remove()
        return torch.stack(drops, dim=1).float()


class RelevanceAccumulator:
    """Per-class sums of relevance scores, so the mean over a class's images streams."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sum: torch.Tensor | None = None
        self.count = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, scores: torch.Tensor, y: torch.Tensor) -> None:
        s, y = scores.double().cpu(), y.cpu()
        if self.sum is None:
            self.sum = torch.zeros(self.num_classes, s.shape[1], dtype=torch.float64)
        self.sum.index_add_(0, y, s)
        self.count.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))

    def tensors(self) -> list[torch.Tensor]:
        return [self.sum, self.count]

    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp_min(1)[:, None]
