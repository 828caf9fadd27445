"""Fold eval-mode BatchNorm into the preceding convolution for the attack's forward/backward passes.

Adversarial examples are crafted in eval mode, where BatchNorm is a fixed per-channel affine map, so
conv -> BN equals one convolution with scaled weights and a bias. The attack of PGD-k runs k forward and
backward passes through a model whose weights do not change during the attack: folding once per batch
removes every BatchNorm from those passes (the same arithmetic up to float rounding).

The folded model is a twin built once per model and cached: it shares every parameter and buffer that
folding does not touch, and each call only recomputes the folded weights (one product per convolution).
Building a fresh copy per batch (deepcopy plus new Conv2d modules) cost more Python time than the attack
saved on a GPU, where a ResNet-18 step at batch 128 is bound by the host, not the device.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from chanscope.models.resnet import BasicBlock, CifarResNet

__all__ = ["folded_copy", "folded", "fold_conv_bn"]

Pairs = list[tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]]
# model -> (the model's tensors when the twin was built, twin, [(conv, bn, fused conv) of the twin])
_TWINS: weakref.WeakKeyDictionary[nn.Module, tuple[list[torch.Tensor], nn.Module, Pairs]] = (
    weakref.WeakKeyDictionary())


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    # the product keeps conv.weight's memory format (channels_last on CUDA)
    return conv.weight * scale.view(-1, 1, 1, 1), (b - bn.running_mean) * scale + bn.bias


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution equal to bn(conv(x)) with bn in eval mode."""
    fused = torch.nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size,
                                     conv.stride, conv.padding, conv.dilation, conv.groups, bias=True,
                                     device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        w, b = _folded(conv, bn)
        fused.weight = nn.Parameter(w, requires_grad=False)
        fused.bias = nn.Parameter(b, requires_grad=False)
    return fused


def _build_twin(model: CifarResNet) -> tuple[nn.Module, Pairs]:
    memo: dict[int, object] = {id(t): t for t in _tensors(model)}
    twin = copy.deepcopy(model, memo=memo)  # new modules, the same parameter and buffer tensors
    pairs: Pairs = []

    def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
        fused = fold_conv_bn(conv, bn)
        pairs.append((conv, bn, fused))
        return fused

    twin.conv1, twin.bn1 = fold(twin.conv1, twin.bn1), nn.Identity()
    for mod in twin.modules():
        if isinstance(mod, BasicBlock):
            mod.conv1, mod.bn1 = fold(mod.conv1, mod.bn1), nn.Identity()
            mod.conv2, mod.bn2 = fold(mod.conv2, mod.bn2), nn.Identity()
            if len(mod.shortcut) == 2:
                mod.shortcut = nn.Sequential(fold(mod.shortcut[0], mod.shortcut[1]))
    return twin.eval(), pairs


@torch.no_grad()
def folded_copy(model: nn.Module) -> nn.Module:
    """An eval-mode twin of a post-activation CifarResNet with every conv+BN pair folded, up to date with
    the model's current weights and BatchNorm statistics; other models (pre-activation blocks, foreign
    modules) are returned unchanged. The original model is not modified."""
    if not isinstance(model, CifarResNet) or model.preact:
        return model
    now = _tensors(model)
    entry = _TWINS.get(model)
    if entry is None or len(entry[0]) != len(now) or any(a is not b for a, b in zip(entry[0], now)):
        entry = _TWINS[model] = (now, *_build_twin(model))  # first call, or .to()/new tensors since
    _, twin, pairs = entry
    for conv, bn, fused in pairs:  # conv, bn hold the model's own tensors: refresh from them
        w, b = _folded(conv, bn)
        if fused.weight.shape == w.shape:  # in place: a captured CUDA graph reads these addresses
            fused.weight.copy_(w)
            fused.bias.copy_(b)
        else:  # first use after a release
            fused.weight.data, fused.bias.data = w, b
    twin.eval()
    return twin


@contextmanager
def folded(model: nn.Module, keep: bool = False) -> Iterator[nn.Module]:
    """`folded_copy` for the span of an attack. On exit the folded weights are released (the cached module
    structure stays), so the twin adds no memory to the update that follows, a training step's peak;
    keep=True keeps them at their addresses for a captured CUDA graph (`graphed_pgd`)."""
    twin = folded_copy(model)
    try:
        yield twin
    finally:
        entry = _TWINS.get(model)
        if entry is not None and not keep:
            for _, _, fused in entry[2]:
                fused.weight.data = fused.weight.data.new_empty(0)
                fused.bias.data = fused.bias.data.new_empty(0)
