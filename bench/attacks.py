"""Our PGD-20 against torchattacks' PGD-20: same model, same batch, side by side, interleaved.

    python bench/attacks.py --arch resnet18 --width 0.25 --batch 128 --repeats 5

Prints images/s of each and the ratio ours / torchattacks (goal: >= 1.0).
"""

from __future__ import annotations

import torch
from _timing import bench_parser, embedded_batch, interleaved_medians  # noqa: E402  (bench/ is on sys.path when run as a script)

from chanscope.attacks import pgd
from chanscope.device import pick_device
from chanscope.models import create_model


def main() -> None:
    ap = bench_parser(__doc__, arch="resnet18", width=0.25, batch=128, steps=20, repeats=5)
    args = ap.parse_args()
    import torchattacks

    dev = pick_device(args.device)
    x, y = embedded_batch(args.batch, dev, "test")
    torch.manual_seed(0)
    model = create_model(args.arch, width=args.width).to(dev).eval()
    eps, alpha = 8 / 255, 0.8 / 255
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=False)

    runs = {
        "chanscope": lambda: pgd(model, x, y, eps=eps, alpha=alpha, steps=args.steps, random_start=False),
        "torchattacks": lambda: theirs(x, y),
    }
    med = interleaved_medians(runs, args.repeats, dev)
    print(f"device {dev}, torch {torch.__version__}, {args.arch} width {args.width}, batch {args.batch}, "
          f"PGD-{args.steps}, median of {args.repeats}")
    for k, t in med.items():
        print(f"  {k:12s} {args.batch / t:9.1f} img/s")
    print(f"  ratio chanscope / torchattacks = {med['torchattacks'] / med['chanscope']:.3f}")


if __name__ == "__main__":
    main()
