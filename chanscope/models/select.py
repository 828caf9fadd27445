"""Channel selection modules: CIFS (Yan et al., ICML 2021), CAS (Bai et al., ICLR 2021) and FSR (Kim et al.,
CVPR 2023).

Both take a block's output features (N, C, H, W), return the features multiplied by a per-sample channel
mask, and keep their auxiliary ("probe") logits in `last_logits` for the joint loss. The label that
drives the training-time mask is set by the owning model for one forward only (`label`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CIFS", "CAS", "FSR", "SelectBlock", "PROBES", "TRAIN_LABELS"]

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

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        label, use = None, None
        if self.training and self.label is not None and self.p_true > 0:
            label = self.label
            if self.p_true < 1:  # mix:p, per sample, from the global RNG (saved on resume)
                use = torch.rand(feat.shape[0], device=feat.device) < self.p_true
        attached = self.end_to_end and torch.is_grad_enabled() and feat.requires_grad
        g = self.relevance(feat, label, create_graph=torch.is_grad_enabled() and self.training, use_label=use,
                           attached=attached)
        mask = self.mask_fn(g)
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
    trained toward the label, nr toward the highest-scoring wrong class. `last_logits` holds [r, rec] (the
    heads an adaptive attacker also attacks), `last_nr_logits` the non-robust head. The parts are exposed to
    hooks as the identity modules `robust`, `nonrobust` and `recalibrated`.
    """

    n_heads = 2

    def __init__(self, channels: int, num_classes: int, tau: float = 0.1, hidden: int = 64) -> None:
        super().__init__()
        self.tau = tau
        self.sep_net = _conv_net(channels, hidden)
        self.rec_net = _conv_net(channels, hidden)
        self.aux = nn.Linear(channels, num_classes)
        self.robust, self.nonrobust, self.recalibrated = nn.Identity(), nn.Identity(), nn.Identity()
        self.last_nr_logits: torch.Tensor | None = None

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        mask = gumbel_sigmoid_mask(self.sep_net(feat), self.tau, stochastic=self.training)
        r = self.robust(feat * mask)
        nr = self.nonrobust(feat * (1 - mask))
        rec = self.recalibrated(nr + self.rec_net(nr) * (1 - mask))
        self.last_mask = mask.detach()
        self.last_logits = [self.aux(r.mean(dim=(2, 3))), self.aux(rec.mean(dim=(2, 3)))]
        self.last_nr_logits = self.aux(nr.mean(dim=(2, 3)))
        return r + rec


class SelectBlock(nn.Module):
    """A residual block followed by a channel selector: hooks on `.block` see unmasked features,
    hooks on the SelectBlock itself see masked ones."""

    def __init__(self, block: nn.Module, select: _Selector) -> None:
        super().__init__()
        self.block = block
        self.select = select

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.select(self.block(x))
