"""Cost of one training step by method, measured side by side on the same batch.

Prints: standard step, PGD-AT step (steps k), CIFS step (PGD-k on the joint loss + joint update), and
the ratios AT / ((k + 1) x standard) (about 1.0 when the attack costs no more than its k forward-backward
passes) and CIFS / AT. Timings interleave the methods (round robin) and report medians, so machine noise
hits all of them alike.

    python bench/train_step.py --arch resnet18 --width 0.25 --batch 128 --steps 10 --repeats 5
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from _timing import (  # bench/ is on sys.path when run as a script
    bench_parser,
    embedded_batch,
    interleaved_medians,
    training_step,
)

from chanscope.device import pick_device
from chanscope.models import create_model
from chanscope.train.config import build_config


def main() -> None:
    ap = bench_parser(__doc__, arch="resnet18", width=0.25, batch=128, steps=10, repeats=5)
    args = ap.parse_args()
    dev = pick_device(args.device)
    x, y = embedded_batch(args.batch, dev)
    runs = {}
    for method in ("standard", "at", "cifs"):
        cfg = build_config(None, method=method, arch=args.arch, width=args.width, steps=args.steps)
        torch.manual_seed(0)
        model = create_model(args.arch, width=args.width, **{k: v for k, v in cfg.model_kwargs().items()
                                                             if k != "width"}).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        runs[method] = training_step(cfg, model, opt, x, y, nullcontext)

    med = interleaved_medians(runs, args.repeats, dev)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.arch} width "
          f"{args.width}, batch {args.batch}, PGD-{args.steps}, median of {args.repeats}")
    for m, t in med.items():
        print(f"  {m:9s} step {t * 1000:9.1f} ms   {args.batch / t:8.1f} img/s")
    print(f"  AT / ((steps+1) x standard) = {med['at'] / ((args.steps + 1) * med['standard']):.3f}")
    print(f"  CIFS / AT                   = {med['cifs'] / med['at']:.3f}")


if __name__ == "__main__":
    main()
