"""Memory layout of the activations, per stage: a speed choice that leaves the arithmetic alone.

Applied from outside the model: `set_layout(model, layout)` registers forward pre-hooks on the stem and the
stages of a chanscope ResNet that hand each its input in the memory format the layout asks for. The model's
own forward knows nothing of layouts or devices.

oneDNN's CPU convolutions run channels-last (NHWC) kernels faster than blocked NCHW ones where a feature map
has many pixels and slower where it has few (`bench/layouts.py`, numbers in docs/performance.md). "hybrid"
therefore feeds each stage channels-last where the stage computes at 16x16 or more and NCHW below; weights
stay NCHW (oneDNN reorders them either way, and the optimiser and checkpoints then see one format). A layout
changes only the order of float additions inside a convolution, so results agree to rounding.

On CPU a pass that computes parameter gradients (the training update) stays NCHW whatever the layout:
oneDNN 3.12 (torch 2.14) crashes or corrupts memory computing the weight gradient of a strided 1x1
convolution from channels-last input with fewer than 16 input channels and an odd batch
(`tests/test_models.py` keeps a reproducer). Forward passes and input gradients, the attack's and the
evaluation's work, are where the layout pays.

Layouts: "auto" (CPU: hybrid; other devices: leave the input's format, which training sets to
channels_last on CUDA), "hybrid", "nchw", "channels_last".
"""

from __future__ import annotations

import torch
import torch.nn as nn

from chanscope.train.config import LAYOUTS

__all__ = ["LAYOUTS", "HYBRID_MIN_SIDE", "check_layout", "resolve_layout", "to_layout", "set_layout",
           "layout_of"]

HYBRID_MIN_SIDE = 16  # hybrid: channels-last where a stage's output is at least this many pixels on a side


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return layout


def resolve_layout(layout: str, device_type: str) -> str:
    """What `layout` means on a device: "auto" is "hybrid" on CPU and "keep" (the input's format) elsewhere."""
    check_layout(layout)
    if layout == "auto":
        return "hybrid" if device_type == "cpu" else "keep"
    return layout


def to_layout(x: torch.Tensor, layout: str, stride: int = 1, param_grads: bool = False) -> torch.Tensor:
    """`x`, the input of a stage that downsamples by `stride`, in the memory format `layout` asks for;
    NCHW on CPU when the pass computes parameter gradients (see the module note)."""
    mode = resolve_layout(layout, x.device.type)
    if mode == "keep" or x.dim() != 4:
        return x
    if param_grads and x.device.type == "cpu":
        mode = "nchw"
    if mode == "hybrid":
        mode = "channels_last" if min(x.shape[-2:]) // stride >= HYBRID_MIN_SIDE else "nchw"
    fmt = torch.channels_last if mode == "channels_last" else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


class _Layout:
    """One model's layout and whether the current pass computes parameter gradients (set by the root hook,
    read by the stage hooks). Holds no reference to the model: a deep copy (a folded twin) gets its own."""

    def __init__(self, layout: str) -> None:
        self.layout, self.grads = layout, False


class _RootHook:
    """Pre-hook on the model: decides once per forward whether parameters get gradients, and hands the stem
    its input in the layout's format (the normalisation that follows keeps the format)."""

    def __init__(self, state: _Layout) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            return None
        st = self.state
        st.grads = (x.device.type == "cpu" and torch.is_grad_enabled()
                    and any(p.requires_grad for p in module.parameters()))
        return (to_layout(x, st.layout, 1, st.grads), *args[1:])


class _StageHook:
    """Pre-hook on a stage: its input in the layout's format for a stage that downsamples by `stride`."""

    def __init__(self, state: _Layout, stride: int) -> None:
        self.state, self.stride = state, stride

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (to_layout(args[0], self.state.layout, self.stride, self.state.grads), *args[1:])


def _stages(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """(stage, stride) of a chanscope ResNet; nothing for other models."""
    names = getattr(model, "stage_names", None)
    strides = getattr(model, "stage_strides", None)
    if names is None or strides is None:
        return []
    return [(getattr(model, n), strides[n]) for n in names]


def _drop(module: nn.Module) -> None:
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, (_RootHook, _StageHook)):
            del module._forward_pre_hooks[key]


def set_layout(model: nn.Module, layout: str) -> nn.Module:
    """Feed the stem and each stage of `model` their input in `layout`'s memory format (replacing an earlier
    layout). Models other than chanscope's ResNets are left as they are. Returns the model."""
    check_layout(layout)
    stages = _stages(model)
    if not stages:
        return model
    _drop(model)
    for mod, _ in stages:
        _drop(mod)
    state = _Layout(layout)
    model.register_forward_pre_hook(_RootHook(state))
    for mod, stride in stages:
        mod.register_forward_pre_hook(_StageHook(state, stride))
    return model


def layout_of(model: nn.Module) -> str | None:
    """The layout `set_layout` gave the model (None: none, each stage takes its input as it comes)."""
    for hook in model._forward_pre_hooks.values():
        if isinstance(hook, _RootHook):
            return hook.state.layout
    return None
