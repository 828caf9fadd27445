"""Does torch.compile keep a training pass's gradients? Eager and compiled input gradients of a train-mode
CIFAR ResNet, cut after each stage, against the same pass in float64.

    python bench/compile_check.py [--arch resnet18] [--width 0.0625] [--batch 8] [--device cpu]

Prints, per cut, max |g - g64| / max |g64| for eager float32 and for torch.compile float32. Why `chanscope
train --compile` runs eagerly on CPU: there the compiled error grew stage by stage (torch 2.14.1).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn as nn

from chanscope.accel.layout import set_layout
from chanscope.device import pick_device
from chanscope.models import create_model


class _Prefix(nn.Module):
    """The model's stem and its first `stages` stages (feature maps out, no pooling)."""

    def __init__(self, model: nn.Module, stages: int) -> None:
        super().__init__()
        self.model, self.stages = model, stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        out = m.bn1(m.conv1(m.normalize(x)))
        out = out if m.preact else torch.relu(out)
        for name in m.stage_names[:self.stages]:
            out = getattr(m, name)(out)
        return out


def _input_grad(fn, net: _Prefix, state: dict, x: torch.Tensor) -> torch.Tensor:
    net.model.load_state_dict(state)  # the same BatchNorm buffers for every pass
    xi = x.clone().requires_grad_(True)
    out = fn(xi)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    (out * weights).sum().backward()
    return xi.grad.double()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=float, default=0.0625)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    dev = pick_device(args.device)
    torch.manual_seed(0)
    model = create_model(args.arch, width=args.width).to(dev).train()
    set_layout(model, "nchw")
    x = torch.rand(args.batch, 3, 32, 32, device=dev)
    state = copy.deepcopy(model.state_dict())
    print(f"torch {torch.__version__}, {args.arch} width {args.width}, batch {args.batch}, train mode, {dev}")
    t0 = time.time()
    for k in range(len(model.stage_names) + 1):
        net = _Prefix(model, k)
        ref = copy.deepcopy(net).double()
        g64 = _input_grad(ref, ref, {n: v.double() if v.is_floating_point() else v for n, v in state.items()},
                          x.double())
        eager = _input_grad(net, net, state, x)
        compiled = _input_grad(torch.compile(net), net, state, x)
        scale = g64.abs().max().item()
        cut = model.stage_names[k - 1] if k else "stem"
        print(f"  up to {cut:7s} relative error: eager {(eager - g64).abs().max().item() / scale:.2e}, "
              f"compiled {(compiled - g64).abs().max().item() / scale:.2e}", flush=True)
    print(f"  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
