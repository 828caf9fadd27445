"""Cost of recording: a pass with the activation recorder divided by the same pass without hooks.

Same model, same batches, same attack (PGD-k), side by side and interleaved in one run; goal <= 1.05.

    python bench/hooks.py --arch resnet18 --width 0.25 --batch 250 --batches 4 --steps 10 --repeats 3
"""

from __future__ import annotations

import statistics
import time

import torch
from _timing import bench_parser, embedded_batch, sync  # bench/ is on sys.path when run as a script

from chanscope.attacks import pgd
from chanscope.device import pick_device
from chanscope.models import create_model
from chanscope.observe.hooks import ActivationRecorder


def main() -> None:
    ap = bench_parser(__doc__, arch="resnet18", width=0.25, batch=250, batches=4, steps=10, repeats=3)
    args = ap.parse_args()
    dev = pick_device(args.device)
    n = args.batch * args.batches
    x, y = embedded_batch(n, dev, "test")
    torch.manual_seed(0)
    model = create_model(args.arch, width=args.width).to(dev).eval()

    def one_pass(record: bool) -> float:
        sync(dev)
        t = time.perf_counter()
        rec = ActivationRecorder(model, [model.feature_layer], 10)
        with rec if record else _Null():
            for i in range(0, n, args.batch):
                xb, yb = x[i:i + args.batch], y[i:i + args.batch]
                torch.manual_seed(i)
                xa = pgd(model, xb, yb, eps=8 / 255, alpha=0.8 / 255, steps=args.steps, random_start=False)
                if record:
                    rec.observe(xb, yb, "natural")
                    rec.observe(xa, yb, "adversarial")
                else:
                    with torch.no_grad():
                        model(xb)
                        model(xa)
        sync(dev)
        return time.perf_counter() - t

    one_pass(True)
    one_pass(False)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for rec in (False, True):
            times[rec].append(one_pass(rec))
    a, b = statistics.median(times[True]), statistics.median(times[False])
    print(f"device {dev}, torch {torch.__version__}, {args.arch} width {args.width}, {n} images, PGD-{args.steps}, "
          f"median of {args.repeats}")
    print(f"  with recording    {a:8.2f} s")
    print(f"  without hooks     {b:8.2f} s")
    print(f"  ratio             {a / b:8.3f}  (goal <= 1.05)")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


if __name__ == "__main__":
    main()
