"""Where the CPU allocator mode pays: `chanscope train`'s CIFS step with glibc's defaults against "reuse".

    python bench/cpu_alloc.py [--width 1] [--batch 128] [--repeats 8] [--steps 10]

The mode is process-wide (`chanscope.accel.cpu_alloc`), so each side runs in a worker process of its own with the
same model, weights and batch; the parent interleaves the rounds. Prints seconds per step (medians and the
per-round ratio), minor page faults per step, and each worker's resident high-water mark after warm-up and
after the last round (a heap that fragments keeps growing over the first steps). Expect a gain only
where the largest activation exceeds 32 MiB (batch x stem channels x 32 x 32 x 4 bytes: full width at batch
128); below that glibc already reuses the blocks.
"""

from __future__ import annotations

import resource
import statistics
import sys
from contextlib import nullcontext

import torch
from _timing import (  # bench/ is on sys.path when run as a script
    Worker,
    bench_parser,
    embedded_batch,
    interleaved_times,
    paired_ratios,
    peak_rss_mb,
    serve,
    training_step,
)

from chanscope.accel.cpu_alloc import CPU_ALLOC_MODES


def _worker(args, mode: str) -> None:
    from chanscope.accel.cpu_alloc import set_cpu_alloc
    from chanscope.models import create_model
    from chanscope.train.config import build_config

    set_cpu_alloc(mode)
    x, y = embedded_batch(args.batch, torch.device("cpu"))
    cfg = build_config(None, method="cifs", width=args.width, steps=args.steps)
    torch.manual_seed(0)
    model = create_model("resnet18", **cfg.model_kwargs()).train()
    step = training_step(cfg, model, torch.optim.SGD(model.parameters(), lr=0.01), x, y, nullcontext)
    faults: list[int] = []

    def counted() -> None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    serve(counted, lambda: f"{peak_rss_mb():.0f} {statistics.median(faults[1:] or faults or [0]):.0f}")


def main() -> None:
    ap = bench_parser(__doc__, width=1.0, batch=128, repeats=8, steps=10)
    ap.add_argument("--worker", choices=CPU_ALLOC_MODES, default=None, help="(internal) run one side")
    args = ap.parse_args()
    if args.worker:
        _worker(args, args.worker)
        return
    cmd = [sys.executable, __file__, "--width", str(args.width), "--batch", str(args.batch), "--steps",
           str(args.steps), "--worker"]
    workers = {mode: Worker(cmd + [mode]) for mode in ("system", "reuse")}
    try:
        workers["system"](), workers["reuse"]()  # warm-up steps (interleaved_times adds one more)
        after_warmup = {m: w.ask("report").split()[0] for m, w in workers.items()}
        times = interleaved_times(workers, args.repeats, torch.device("cpu"))
        final = {m: w.ask("report").split() for m, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    print(f"torch {torch.__version__}, ResNet-18 CIFS width {args.width}, batch {args.batch}, PGD-{args.steps} "
          f"step, {args.repeats} interleaved rounds, a worker process per allocator mode")
    for m in workers:
        print(f"  {m:6s} {statistics.median(times[m]):8.3f} s/step, {final[m][1]:>9s} page faults/step, "
              f"resident high-water {after_warmup[m]} MB after warm-up, {final[m][0]} MB at the end")
    med, lo, hi = paired_ratios(times, "system", "reuse")
    print(f"  speed ratio reuse / system = {statistics.median(times['system']) / statistics.median(times['reuse']):.3f}"
          f" (per round: median {med:.3f}, range {lo:.3f}-{hi:.3f}); high-water ratio "
          f"{float(final['reuse'][0]) / float(final['system'][0]):.3f}")


if __name__ == "__main__":
    main()
