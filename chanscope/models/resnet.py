"""CIFAR-style residual networks (ResNet, PreAct ResNet, WideResNet) with optional CIFS/CAS stages.

One class serves every variant; the registry functions only choose depths, widths and block type.
Inputs are images in [0, 1]; the first module normalises them, so attacks work in pixel units.
`model(x)` returns final logits only; `model(x, y, return_aux=True)` also returns the probe logits, and
`return_heads=True` each selector's `Heads`. A defence is a factory from the registry in
`chanscope.models.select`: the network asks it for the selector after each block of a selected stage.
Blocks rectify and add in place, on tensors no backward reads (three fewer activation-sized allocations per
block, the same arithmetic): a forward hook that keeps a BatchNorm's output, or returns it, without copying
it sees it rectified afterwards (`chanscope.observe.hooks` reduces outputs at once).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from chanscope.models._registry import register_model
from chanscope.models.select import DEFENCES, PROBES, Heads, SelectBlock, SelectStage, _Selector

__all__ = ["CifarResNet", "Normalize", "BasicBlock", "PreActBlock", "WideBlock", "FEATURE_SELECT"]

FEATURE_SELECT = ("none", *DEFENCES)  # the built-in ones


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the model's first layer."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _shortcut(cin: int, cout: int, stride: int, bn: bool) -> nn.Sequential:
    if stride == 1 and cin == cout:
        return nn.Sequential()
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, stride=stride, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """He et al. 2016 post-activation block; the output is after the residual ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride, bn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place on tensors no backward reads (BN and conv save their inputs, not outputs): the same
        # arithmetic with three fewer activation-sized allocations per block
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out, inplace=True)


class PreActBlock(nn.Module):
    """He et al. 2016b pre-activation block (BN-ReLU-conv); the output is not rectified."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = _shortcut(cin, cout, stride, bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x), inplace=True)
        sc = self.shortcut(out) if len(self.shortcut) else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out), inplace=True)
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        out = self.conv2(out)
        out += sc
        return out


WideBlock = PreActBlock  # WRN (Zagoruyko & Komodakis 2016) uses the pre-activation block


class CifarResNet(nn.Module):
    """Stem (3x3 conv), stages `layer1..layerN`, global average pool, `linear` classifier.

    Args:
        block: "basic" (ResNet) or "preact" (PreAct ResNet / WRN; adds a final BN-ReLU `bn_final`).
        depths, widths: blocks and channels per stage; `stem` channels of the first conv.
        feature_select: "none", "cifs", "cas" or "fsr"; which stages carry it (default: the last one; FSR sits
            after the stage's last block, as the official code puts it after layer4).
        probes: CIFS probe kind per block of each selected stage (the paper: nonlinear, then linear);
            the last entry repeats for deeper stages.
    """

    def __init__(self, block: str, depths: Sequence[int], widths: Sequence[int], stem: int, *,
                 num_classes: int = 10, in_channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, feature_select: str = "none",
                 select_stages: Sequence[str] | None = None, probes: Sequence[str] = ("nonlinear", "linear"),
                 probe_hidden: int = 128, topk: int = 2, train_label: str = "true",
                 mask: str = "softmax", tau: float = 0.1) -> None:
        super().__init__()
        if feature_select != "none" and feature_select not in DEFENCES:  # the registry now, defences added later too
            raise ValueError(f"unknown feature_select {feature_select!r}; known: none, {', '.join(DEFENCES)}")
        bad = [p for p in probes if p not in PROBES]
        if bad or not probes:
            raise ValueError(f"unknown probe kinds {bad}; known: {', '.join(PROBES)}")
        self.preact = block == "preact"
        self.normalize = Normalize(mean or [0.0] * in_channels, std or [1.0] * in_channels)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.Identity() if self.preact else nn.BatchNorm2d(stem)
        stage_names = [f"layer{i + 1}" for i in range(len(depths))]
        selected = list(select_stages) if select_stages else [stage_names[-1]]
        unknown = [s for s in selected if s not in stage_names]
        if unknown:
            raise ValueError(f"unknown select_stages {unknown}; stages: {', '.join(stage_names)}")
        if feature_select == "none":
            selected = []
        self.stage_names = stage_names
        self.stage_strides = {name: 1 if si == 0 else 2 for si, name in enumerate(stage_names)}
        options = dict(probes=tuple(probes), probe_hidden=probe_hidden, topk=topk, train_label=train_label,
                       mask=mask, tau=tau)
        cin = stem
        for si, (name, depth, cout) in enumerate(zip(stage_names, depths, widths)):
            blocks: list[nn.Module] = []
            for bi in range(depth):
                stride = 1 if (si == 0 or bi > 0) else 2
                blk = (PreActBlock if self.preact else BasicBlock)(cin, cout, stride)
                sel = (DEFENCES[feature_select](cout, num_classes, block_index=bi, depth=depth, **options)
                       if name in selected else None)
                blocks.append(blk if sel is None else SelectBlock(blk, sel))
                cin = cout
            stage = SelectStage if any(isinstance(b, SelectBlock) for b in blocks) else nn.Sequential
            self.add_module(name, stage(*blocks))
        self.bn_final = nn.BatchNorm2d(cin) if self.preact else nn.Identity()
        self.linear = nn.Linear(cin, num_classes)
        self.num_classes, self.in_channels = num_classes, in_channels

    @property
    def selectors(self) -> list[tuple[str, _Selector]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, _Selector)]

    @property
    def feature_layer(self) -> str:
        """Name of the module whose output is the penultimate feature map (before pooling)."""
        return "bn_final" if self.preact else self.stage_names[-1]

    def _features(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, list[Heads]]:
        out = self.bn1(self.conv1(self.normalize(x)))
        out = out if self.preact else F.relu(out, inplace=True)
        heads: list[Heads] = []
        for name in self.stage_names:
            stage = getattr(self, name)
            if isinstance(stage, SelectStage):
                out, h = stage(out, y)
                heads += h
            else:
                out = stage(out)
        out = self.bn_final(out)
        return (F.relu(out, inplace=True) if self.preact else out), heads

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate feature map (before pooling)."""
        return self._features(x, None)[0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, return_aux: bool = False,
                return_heads: bool = False):
        """Final logits; with return_aux, also the list of probe logits (every selector's, in order); with
        return_heads, each selector's `Heads` instead.

        y drives the training-time CIFS/CAS mask; it is ignored in eval mode (never the label at test).
        """
        features, heads = self._features(x, y if self.training else None)
        logits = self.forward_head(features)
        if return_heads:
            return logits, heads
        if return_aux:
            return logits, [t for h in heads for t in h.logits]
        return logits


def _scale(channels: Sequence[int], width: float) -> list[int]:
    if width <= 0:
        raise ValueError(f"width={width} must be positive")
    return [max(1, int(round(c * width))) for c in channels]


def _resnet(block: str, depths: Sequence[int], base: Sequence[int], stem: int, width: float, **kw) -> CifarResNet:
    return CifarResNet(block, depths, _scale(base, width), _scale([stem], width)[0], **kw)


@register_model
def resnet10(width: float = 1.0, **kw) -> CifarResNet:
    return _resnet("basic", (1, 1, 1, 1), (64, 128, 256, 512), 64, width, **kw)


@register_model
def resnet18(width: float = 1.0, **kw) -> CifarResNet:
    return _resnet("basic", (2, 2, 2, 2), (64, 128, 256, 512), 64, width, **kw)


@register_model
def preact_resnet18(width: float = 1.0, **kw) -> CifarResNet:
    return _resnet("preact", (2, 2, 2, 2), (64, 128, 256, 512), 64, width, **kw)


@register_model
def wrn28_10(width: float = 1.0, **kw) -> CifarResNet:
    return _resnet("preact", (4, 4, 4), (160, 320, 640), 16, width, **kw)


@register_model
def wrn34_10(width: float = 1.0, **kw) -> CifarResNet:
    return _resnet("preact", (5, 5, 5), (160, 320, 640), 16, width, **kw)
