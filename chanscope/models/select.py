"""Channel selection modules: CIFS (Yan et al., ICML 2021), CAS (Bai et al., ICLR 2021) and FSR (Kim et al.,
CVPR 2023).

Each is a module `select(features, label=None) -> (features', Heads)`: it takes a block's output features
(N, C, H, W) and the label that drives a training-time mask (ignored in eval mode, never the label at test),
and returns the selected features with its `Heads` (the auxiliary "probe" logits of the joint loss and the
adaptive attacks, the mask, FSR's non-robust head). Nothing is kept on the module between forwards.

A defence is a factory registered by name (`register_defence`): given a block's place and the network's
options it returns the selector that follows that block, or None. The network asks the registry for every
block, so adding a defence is its module, its factory and the registration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CIFS", "CAS", "FSR", "SelectBlock", "SelectStage", "Heads", "DEFENCES", "register_defence",
           "PROBES", "TRAIN_LABELS"]

PROBES = ("nonlinear", "linear")
TRAIN_LABELS = ("true", "pred", "mix:<p>")
MASKS = ("softmax", "softmax_t:<T>", "softmax_scaled", "sigmoid")


def parse_train_label(text: str) -> float:
    """Probability of using the true label for the training mask: true -> 1, pred -> 0, mix:p -> p."""
    if text == "true":
        return 1.0
    if text == "pred":
        return 0.0
    if text.startswith("mix:"):
        try:
            p = float(text[4:])
        except ValueError:
            p = -1.0
        if 0.0 <= p <= 1.0:
            return p
    raise ValueError(f"unknown train_label {text!r}; known: true, pred, mix:p with 0 <= p <= 1")


def mask_function(text: str):
    """Channel mask from relevance g (N, C): softmax (the paper), softmax_t:T (temperature T),
    softmax_scaled (softmax x C, keeping the features' scale), sigmoid."""
    if text == "softmax":
        return lambda g: F.softmax(g, dim=1)
    if text == "softmax_scaled":
        return lambda g: F.softmax(g, dim=1) * g.shape[1]
    if text == "sigmoid":
        return torch.sigmoid
    if text.startswith("softmax_t:"):
        try:
            t = float(text[len("softmax_t:"):])
        except ValueError:
            t = 0.0
        if t > 0:
            return lambda g: F.softmax(g / t, dim=1)
    raise ValueError(f"unknown mask {text!r}; known: {', '.join(MASKS)}")


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


@dataclass
class Heads:
    """What a selector returns beside the features: `logits`, the auxiliary heads a joint loss trains and an
    adaptive attacker attacks (one per selector; FSR: robust and recalibrated); `mask`, detached; `nonrobust`,
    FSR's non-robust head (trained toward a wrong class, never attacked)."""

    logits: list[torch.Tensor]
    mask: torch.Tensor
    nonrobust: torch.Tensor | None = None


class _Selector(nn.Module):
    n_heads = 1  # entries of Heads.logits


class CIFS(_Selector):
    """Channel-wise Importance-based Feature Selection.

    Relevance of channel k: gradient of (logit of the top-1 class + logits of the next top-k-1
    predicted classes) of the probe w.r.t. the channel, summed over positions. The top-1 class is the
    true label in training (train_label="true", the paper) and the prediction otherwise. Mask:
    softmax over channels, so it is non-negative and sums to 1 per sample.
    """

    def __init__(self, channels: int, num_classes: int, probe: str = "nonlinear", hidden: int = 128,
                 topk: int = 2, train_label: str = "true", mask: str = "softmax") -> None:
        super().__init__()
        self.p_true = parse_train_label(train_label)
        self.mask_fn = mask_function(mask)
        if topk < 1:
            raise ValueError(f"topk={topk} must be at least 1")
        self.probe = make_probe(probe, channels, num_classes, hidden)
        self.probe_kind, self.topk, self.train_label, self.mask_kind = probe, topk, train_label, mask
        self.end_to_end = False  # adaptive attacks: differentiate the input through the relevance and the mask

    def relevance(self, feat: torch.Tensor, label: torch.Tensor | None = None,
                  create_graph: bool = False, use_label: torch.Tensor | None = None,
                  attached: bool = False) -> torch.Tensor:
        """Per-channel relevance g (N, C) on a detached copy of `feat` (the mask is trained through the
        probe's parameters only, as in the official code); attached=True differentiates g as a function of
        `feat` itself (create_graph), so a gradient reaches the input through the mask too.

        label: top-1 class where `use_label` (bool per sample, default all) is true; the probe's own
        top-1 prediction elsewhere. The runner-ups are always the probe's predictions 2..k.
        """
        with torch.enable_grad():  # AutoAttack/RobustBench call forward under no_grad
            f = feat if attached else feat.detach().requires_grad_(True)
            logits = self.probe(f)
            k = min(self.topk, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            if label is not None:
                first = label.view(-1, 1)
                if use_label is not None:
                    first = torch.where(use_label.view(-1, 1), first, top[:, :1])
                chosen = torch.cat([first, top[:, 1:k]], dim=1)  # label + runner-ups (as the official code)
            else:
                chosen = top
            score = logits.gather(1, chosen).sum()
            (grad,) = torch.autograd.grad(score, f, create_graph=create_graph or attached)
        return grad.sum(dim=(2, 3))

    def forward(self, feat: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, Heads]:
        use = None
        if not (self.training and self.p_true > 0):
            label = None
        if label is not None:
            if self.p_true < 1:  # mix:p, per sample, from the global RNG (saved on resume)
                use = torch.rand(feat.shape[0], device=feat.device) < self.p_true
        attached = self.end_to_end and torch.is_grad_enabled() and feat.requires_grad
        g = self.relevance(feat, label, create_graph=torch.is_grad_enabled() and self.training, use_label=use,
                           attached=attached)
        mask = self.mask_fn(g)
        return feat * mask[:, :, None, None], Heads([self.probe(feat)], mask.detach())


class CAS(_Selector):
    """Channel-wise Activation Suppressing: mask = the auxiliary classifier's weight row of the true
    class (training) or of the predicted class (otherwise)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, feat: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, Heads]:
        logits = self.fc(feat.mean(dim=(2, 3)))
        cls = label if (self.training and label is not None) else logits.argmax(1)
        mask = self.fc.weight[cls]
        return feat * mask[:, :, None, None], Heads([logits], mask.detach())


def _conv_net(channels: int, hidden: int) -> nn.Sequential:
    """FSR's separation and recalibration networks: three 3x3 convolutions (no bias), BN-ReLU between."""
    return nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                         nn.Conv2d(hidden, channels, 3, padding=1, bias=False))


def gumbel_sigmoid_mask(z: torch.Tensor, tau: float, stochastic: bool) -> torch.Tensor:
    """FSR's mask from the separation scores z, as the official code computes it: p = sigmoid(z); logistic
    (Gumbel-difference) noise on log p and log(1 - p), divided by tau, softmax of the pair. Deterministic
    (stochastic=False) the two noises are equal and cancel: the mask is sigmoid(z / tau), differentiable."""
    eps = 1e-8
    p = torch.sigmoid(z)
    a, b = torch.log(p + eps), torch.log(1 - p + eps)
    if stochastic:
        a = a - torch.log(-torch.log(torch.rand_like(z) + eps) + eps)
        b = b - torch.log(-torch.log(torch.rand_like(z) + eps) + eps)
    return torch.sigmoid(a / (tau + eps) - b / (tau + eps))


class FSR(_Selector):
    """Feature Separation and Recalibration (Kim et al., CVPR 2023).

    The separation network scores every feature element; a Gumbel-sigmoid mask m (stochastic in training,
    deterministic sigmoid(z / tau) otherwise) splits the features f into robust r = m f and non-robust
    nr = (1 - m) f; the recalibration network turns nr into rec = nr + (1 - m) Rec(nr); the block returns
    r + rec. One auxiliary linear classifier, shared, predicts from the pooled r, nr and rec: r and rec are
    trained toward the label, nr toward the highest-scoring wrong class. Its Heads' logits are [r, rec] (the
    heads an adaptive attacker also attacks), `nonrobust` the non-robust head. The parts are exposed to hooks
    as the identity modules `robust`, `nonrobust` and `recalibrated`.
    """

    n_heads = 2

    def __init__(self, channels: int, num_classes: int, tau: float = 0.1, hidden: int = 64) -> None:
        super().__init__()
        self.tau = tau
        self.sep_net = _conv_net(channels, hidden)
        self.rec_net = _conv_net(channels, hidden)
        self.aux = nn.Linear(channels, num_classes)
        self.robust, self.nonrobust, self.recalibrated = nn.Identity(), nn.Identity(), nn.Identity()

    def forward(self, feat: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, Heads]:
        mask = gumbel_sigmoid_mask(self.sep_net(feat), self.tau, stochastic=self.training)
        r = self.robust(feat * mask)
        nr = self.nonrobust(feat * (1 - mask))
        rec = self.recalibrated(nr + self.rec_net(nr) * (1 - mask))
        heads = [self.aux(r.mean(dim=(2, 3))), self.aux(rec.mean(dim=(2, 3)))]
        return r + rec, Heads(heads, mask.detach(), self.aux(nr.mean(dim=(2, 3))))


class SelectBlock(nn.Module):
    """A residual block followed by a channel selector: `(x, label) -> (features, Heads)`. Hooks on `.block`
    see unmasked features, hooks on the SelectBlock (or its stage) the masked ones (`chanscope.observe.hooks`
    takes a tuple output's first entry)."""

    def __init__(self, block: nn.Module, select: _Selector) -> None:
        super().__init__()
        self.block = block
        self.select = select

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, Heads]:
        return self.select(self.block(x), label)


class SelectStage(nn.Sequential):
    """A stage holding selectors: `(x, label) -> (features, [Heads of each selector, in order])`."""

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Heads]]:
        heads = []
        for blk in self:
            if isinstance(blk, SelectBlock):
                x, h = blk(x, label)
                heads.append(h)
            else:
                x = blk(x)
        return x, heads


# name -> factory(channels, num_classes, block_index, depth, **network options) -> a selector or None
DEFENCES: dict[str, Callable[..., _Selector | None]] = {}


def register_defence(name: str):
    """Register `factory(channels, num_classes, *, block_index, depth, **options)` as defence `name` (a
    `feature_select` value); options it does not use it takes as **kwargs."""
    def deco(factory):
        DEFENCES[name] = factory
        return factory
    return deco


@register_defence("cifs")
def _cifs(channels: int, num_classes: int, *, block_index: int, depth: int, probes=("nonlinear", "linear"),
          probe_hidden: int = 128, topk: int = 2, train_label: str = "true", mask: str = "softmax", **_) -> CIFS:
    """After every block of a selected stage; probe kinds per block (the paper: nonlinear, then linear)."""
    return CIFS(channels, num_classes, probes[min(block_index, len(probes) - 1)], probe_hidden, topk, train_label,
                mask)


@register_defence("cas")
def _cas(channels: int, num_classes: int, **_) -> CAS:
    """After every block of a selected stage."""
    return CAS(channels, num_classes)


@register_defence("fsr")
def _fsr(channels: int, num_classes: int, *, block_index: int, depth: int, tau: float = 0.1, **_) -> FSR | None:
    """After the stage's last block, as the official code puts it after layer4."""
    return FSR(channels, num_classes, tau) if block_index == depth - 1 else None
