"""Which memory layout each stage of a model should run in: per stage NCHW vs channels-last, then the model.

    python bench/layouts.py [--arch resnet18] [--width 1] [--batch 128] [--repeats 5] [--device cpu]

Per stage (stem, layer1..): the stage's forward plus the gradient with respect to its input (an attack
iteration's work; parameters frozen) with its input NCHW and channels-last, interleaved, medians, and the
layout `hybrid` picks for it. Then one whole attack iteration (forward and input gradient of the model)
and one training pass (forward and backward with parameter gradients, train mode) under each layout of
`chanscope.accel.layout`, with ratios against NCHW (on CPU the training pass stays NCHW under every layout,
see the module's note on oneDNN, so its ratios show only noise). The hybrid rule (channels-last where a
stage works at 16x16 or more) comes from this table on this project's CPU; run it on yours to check it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _timing import bench_parser, embedded_batch, interleaved_medians  # bench/ is on sys.path as a script

from chanscope.accel.layout import HYBRID_MIN_SIDE, layout_of, set_layout, to_layout
from chanscope.models import create_model


def _stage_inputs(model, x: torch.Tensor) -> list[tuple[str, torch.nn.Module, torch.Tensor, int]]:
    """(name, module, its input, stride) of the stem and every stage, caught by hooks on the model's own
    forward (NCHW)."""
    mods = {"stem": (model.conv1, torch.nn.Sequential(model.conv1, model.bn1), 1),
            **{n: (getattr(model, n), getattr(model, n), model.stage_strides[n]) for n in model.stage_names}}
    seen: dict[str, torch.Tensor] = {}
    hooks = [hooked.register_forward_pre_hook(lambda _m, a, n=n: seen.setdefault(n, a[0].contiguous()))
             for n, (hooked, _, _) in mods.items()]
    layout = layout_of(model)
    set_layout(model, "nchw")
    try:
        with torch.no_grad():
            model(x)
    finally:
        set_layout(model, layout or "nchw")
        for h in hooks:
            h.remove()
    return [(n, module, seen[n], stride) for n, (_, module, stride) in mods.items()]


def _input_grad(module, x: torch.Tensor):
    x = x.detach().requires_grad_(True)

    def run() -> None:
        y = module(x)
        torch.autograd.grad(y.float().square().sum(), x)

    return run


def main() -> None:
    ap = bench_parser(__doc__, arch="resnet18", width=1.0, batch=128, repeats=5)
    args = ap.parse_args()
    from chanscope.device import pick_device

    dev = pick_device(args.device)
    x, y = embedded_batch(args.batch, dev)
    model = create_model(args.arch, width=args.width).to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.arch} width "
          f"{args.width}, batch {args.batch}, median of {args.repeats}; ms per forward + input gradient")
    print(f"  {'stage':8s} {'input':>9s} {'nchw':>9s} {'ch-last':>9s} {'nchw/cl':>8s}  hybrid picks")
    for name, module, h, stride in _stage_inputs(model, x):
        sides = {"nchw": _input_grad(module, h.contiguous()),
                 "cl": _input_grad(module, h.contiguous(memory_format=torch.channels_last))}
        med = interleaved_medians(sides, args.repeats, dev)
        side = min(h.shape[-2:]) // stride
        pick = "channels_last" if side >= HYBRID_MIN_SIDE else "nchw"
        assert to_layout(h, "hybrid", stride).is_contiguous(
            memory_format=torch.channels_last if pick == "channels_last" else torch.contiguous_format)
        print(f"  {name:8s} {'x'.join(map(str, h.shape[1:])):>9s} {med['nchw'] * 1e3:9.1f} {med['cl'] * 1e3:9.1f} "
              f"{med['nchw'] / med['cl']:8.2f}  {pick} (works at {side}x{side})")

    def attack_iteration(layout: str):
        m = create_model(args.arch, width=args.width).to(dev).eval()
        set_layout(m, layout)
        for p in m.parameters():
            p.requires_grad_(False)
        xr = x.clone().requires_grad_(True)
        return lambda: torch.autograd.grad(F.cross_entropy(m(xr), y), xr)

    def training_pass(layout: str):
        m = create_model(args.arch, width=args.width).to(dev).train()
        set_layout(m, layout)

        def run() -> None:
            F.cross_entropy(m(x), y).backward()
            m.zero_grad(set_to_none=True)
        return run

    layouts = ("nchw", "hybrid", "channels_last")
    for what, make in (("attack iteration", attack_iteration), ("training pass", training_pass)):
        med = interleaved_medians({lay: make(lay) for lay in layouts}, args.repeats, dev)
        print(f"  {what}: " + ", ".join(f"{lay} {med[lay] * 1e3:.1f} ms ({med['nchw'] / med[lay]:.2f}x)"
                                        for lay in layouts))


if __name__ == "__main__":
    main()
