"""Does the CUDA-graph training attack compute the eager attack, and what does it save? (run first on a GPU)

    python bench/graph_check.py [--width 1] [--batch 128] [--steps 10]

For AT (cross-entropy) and CIFS (joint loss) ResNet-18: the graphed PGD from the same random start as
eager PGD, float32, on the folded twin: fraction of pixels that differ (sign flips where a gradient is
within rounding of 0), max distance to the input (must be <= eps), then ms per attack of each, interleaved.
On CPU the iteration runs eagerly (no capture): a smoke run of the script.
"""

from __future__ import annotations

import torch
from _timing import bench_parser, embedded_batch, interleaved_medians  # bench/ is on sys.path when run as a script

from chanscope.accel.fold import folded
from chanscope.accel.graphed import graphed_pgd
from chanscope.attacks import pgd
from chanscope.device import pick_device
from chanscope.models import create_model


def main() -> None:
    ap = bench_parser(__doc__, width=1.0, batch=128, steps=10, repeats=5)
    args = ap.parse_args()
    dev = pick_device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    x, y = embedded_batch(args.batch, dev)
    eps, alpha = 8 / 255, 2 / 255
    for select, loss in (("none", "ce"), ("cifs", "joint")):
        torch.manual_seed(0)
        model = create_model("resnet18", width=args.width, feature_select=select).to(dev)
        with folded(model, keep=True) as twin:
            def eager():
                return pgd(twin, x, y, eps=eps, alpha=alpha, steps=args.steps, loss=loss)

            def graphed():
                return graphed_pgd(twin, x, y, eps=eps, alpha=alpha, steps=args.steps, loss=loss)

            torch.manual_seed(1)
            a = eager()
            torch.manual_seed(1)
            b = graphed()
            dist, inside = float((b - x).abs().max()), bool(b.min() >= 0 and b.max() <= 1)
            print(f"{select:5s} {loss:5s}: graphed vs eager differ in {float((a != b).float().mean()):.4%} of "
                  f"pixels, max |graphed - x| {dist * 255:.3f}/255 (eps 8/255), in [0,1]: {inside}")
            med = interleaved_medians({"eager": eager, "graphed": graphed}, args.repeats, dev)
            print(f"      PGD-{args.steps} at batch {args.batch}: eager {med['eager'] * 1e3:.1f} ms, graphed "
                  f"{med['graphed'] * 1e3:.1f} ms, speed-up {med['eager'] / med['graphed']:.2f}x")


if __name__ == "__main__":
    main()
