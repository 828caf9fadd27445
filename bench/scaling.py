"""Cost as the work grows: images/s of standard, AT and CIFS training steps and of the activation
study, over batch sizes and widths, and the AT / ((steps+1) x standard) ratio; plus the memory of the
streaming statistics, which must not grow with the number of images.

    python bench/scaling.py --batches 32,128 --widths 0.125,0.25 --steps 5 --repeats 3
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch
from _timing import bench_parser, embedded, embedded_batch, sync  # bench/ is on sys.path when run as a script

from chanscope.accel.training import batch_loss
from chanscope.attacks.suite import parse_attacks
from chanscope.device import pick_device
from chanscope.models import create_model
from chanscope.observe.hooks import ActivationRecorder
from chanscope.train.config import build_config
from chanscope.workflows.activations import study_activations


def _time(fn, repeats: int, dev: torch.device) -> float:
    fn()
    out = []
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = bench_parser(__doc__, arch="resnet18", batches="32,128", widths="0.125,0.25", steps=5, repeats=3)
    args = ap.parse_args()
    dev = pick_device(args.device)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.arch}, PGD-{args.steps}")
    print(f"{'width':>6} {'batch':>6} {'standard':>10} {'AT':>10} {'CIFS':>10} {'activ.':>10} {'AT/((k+1)std)':>14}"
          "   (images/s)")
    for w in [float(v) for v in args.widths.split(",")]:
        for b in [int(v) for v in args.batches.split(",")]:
            x, y = embedded_batch(b, dev)
            rates = {}
            for method in ("standard", "at", "cifs"):
                cfg = build_config(None, method=method, width=w, steps=args.steps, step_size=2 / 255)
                torch.manual_seed(0)
                m = create_model(args.arch, **cfg.model_kwargs()).to(dev)
                opt = torch.optim.SGD(m.parameters(), lr=0.01)

                def step(cfg=cfg, m=m, opt=opt) -> None:
                    m.train()
                    loss, _ = batch_loss(cfg, m, x, y, nullcontext)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                rates[method] = b / _time(step, args.repeats, dev)
            m = create_model(args.arch, width=w).to(dev).eval()
            spec = parse_attacks(f"pgd{args.steps}", 8 / 255)[0]
            rates["act"] = b / _time(lambda: study_activations(m, x, y, embedded().classes, [m.feature_layer], spec,
                                                               batch_size=b), args.repeats, dev)
            ratio = rates["standard"] / rates["at"] / (args.steps + 1)
            print(f"{w:6.3f} {b:6d} {rates['standard']:10.1f} {rates['at']:10.1f} {rates['cifs']:10.1f} "
                  f"{rates['act']:10.1f} {ratio:14.3f}")
    # statistics memory: constant in the number of images
    m = create_model(args.arch, width=0.125).to(dev).eval()
    sizes = []
    for n in (100, 1000):
        with ActivationRecorder(m, [m.feature_layer], 10) as rec:
            for i in range(0, n, 100):
                rec.observe(*embedded_batch(100, dev, "test", start=i), "natural")
        st = rec.stats[m.feature_layer]["natural"]
        sizes.append(sum(t.numel() * t.element_size() for t in st.tensors()))
    print(f"statistics memory: {sizes[0]} bytes after 100 images, {sizes[1]} bytes after 1000 images")


if __name__ == "__main__":
    main()
