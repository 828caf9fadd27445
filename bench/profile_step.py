"""Where the time of one CIFS adversarial training step goes (torch.profiler, CPU or CUDA).

    python bench/profile_step.py --width 0.25 --batch 64 --steps 10
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from _timing import bench_parser, embedded_batch  # bench/ is on sys.path when run as a script
from torch.profiler import ProfilerActivity, profile, record_function

from chanscope.accel.training import batch_loss
from chanscope.device import pick_device
from chanscope.models import create_model
from chanscope.train.config import build_config


def main() -> None:
    ap = bench_parser(__doc__, width=0.25, batch=64, steps=10)
    args = ap.parse_args()
    dev = pick_device(args.device)
    x, y = embedded_batch(args.batch, dev)
    cfg = build_config(None, method="cifs", width=args.width, steps=args.steps)
    model = create_model("resnet18", **cfg.model_kwargs()).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sel = [m for _, m in model.selectors]
    orig = [m.relevance for m in sel]
    for m, f in zip(sel, orig):  # label the relevance computation in the trace
        def wrapped(*a, f=f, **k):
            with record_function("cifs_relevance"):
                return f(*a, **k)
        m.relevance = wrapped

    def step() -> None:
        with record_function("attack+update"):
            loss, _ = batch_loss(cfg, model, x, y, nullcontext)
        with record_function("update_backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
