"""Memory layout of the activations, per stage: a speed choice that leaves the arithmetic alone.

oneDNN's CPU convolutions run channels-last (NHWC) kernels faster than blocked NCHW ones where a feature map
has many pixels and slower where it has few. Measured on this project's CPU (2-core Xeon, AVX-512,
ResNet-18, batch 128, forward plus input gradient, `bench/layouts.py`): channels-last is 1.11-1.27x faster
for the stages at 32x32 and 16x16, 1.01x at 8x8 and 0.72x at 4x4. "hybrid" therefore feeds each stage
channels-last where the stage computes at 16x16 or more and NCHW below; weights stay NCHW (oneDNN reorders
them either way, and the optimiser and checkpoints then see one format). A layout changes only the order of
float additions inside a convolution, so results agree to rounding.

On CPU a pass that computes parameter gradients (the training update) stays NCHW whatever the layout:
oneDNN 3.12 (torch 2.14) crashes or corrupts memory computing the weight gradient of a strided 1x1
convolution from channels-last input with fewer than 16 input channels and an odd batch (a segfault in
`chanscope train` at width 1/16; `tests/test_models.py` keeps a reproducer). Forward passes and input
gradients, the attack's and the evaluation's work and 10 of the 11 passes of a PGD-10 training step,
showed no fault over 3,600 odd shapes, and they are where the layout pays.

Layouts: "auto" (CPU: hybrid; other devices: leave the input's format, which training sets to
channels_last on CUDA), "hybrid", "nchw", "channels_last".
"""

from __future__ import annotations

import torch

__all__ = ["LAYOUTS", "HYBRID_MIN_SIDE", "check_layout", "resolve_layout", "to_layout"]

LAYOUTS = ("auto", "hybrid", "nchw", "channels_last")
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
