"""Training-step throughput by method and speed setting, measured side by side (the GPU check's table).

For each batch size and each setting (float32; bf16 autocast + channels_last, our CUDA defaults; the same
with the training attack replayed from CUDA graphs (`--cuda-graphs`); with
--compile, the same plus torch.compile, for the standard step at the last batch size only: compiling the
attack's eval-mode graph as well takes minutes), prints images/s of standard, PGD-AT and CIFS steps, the ratios
AT / ((k+1) x standard) and CIFS / AT, and the speed-up of each setting over float32. Settings of one
batch size are timed interleaved (round robin, medians). Then PGD-20 evaluation throughput (float32, as
`chanscope eval` attacks). On CPU the settings are float32 (the default) and bf16 autocast (`chanscope train
--bf16`).

    python bench/gpu_steps.py --batches 128,512 --steps 10 --repeats 5 [--compile] [--width 1]
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from _timing import bench_parser, interleaved_medians, sync, training_step  # bench/ is on sys.path when run as a script

from chanscope.attacks import pgd
from chanscope.device import pick_device
from chanscope.models import create_model
from chanscope.train.config import build_config

METHODS = ("standard", "at", "cifs")


def make_step(method: str, setting: str, x: torch.Tensor, y: torch.Tensor, args, dev: torch.device):
    on_gpu_compile = setting == "compile" and dev.type == "cuda"  # compile on top of the CUDA defaults
    bf16, cl = "bf16" in setting or on_gpu_compile, "cl" in setting or on_gpu_compile
    cfg = build_config(None, method=method, arch=args.arch, width=args.width, steps=args.steps,
                       compile=setting == "compile", bf16=bf16, channels_last=cl,
                       cuda_graphs=setting.endswith("graphs"))
    torch.manual_seed(0)
    model = create_model(args.arch, **cfg.model_kwargs()).to(dev)
    if cl:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fwd = torch.compile(model) if setting == "compile" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    return training_step(cfg, model, opt, x, y, autocast, forward=fwd)


def main() -> None:
    ap = bench_parser(__doc__, arch="resnet18", width=1.0, batches="128,512", steps=10, repeats=5)
    ap.add_argument("--compile", action="store_true", help="Add the torch.compile setting (slow to build).")
    args = ap.parse_args()
    dev = pick_device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {args.arch} width {args.width}, PGD-{args.steps} training "
          f"attack, median of {args.repeats} interleaved repeats")
    settings = (["fp32", "bf16+cl", "bf16+cl+graphs"] if dev.type == "cuda" else ["fp32", "bf16"]) + (
        ["compile"] if args.compile else [])
    batches = [int(v) for v in args.batches.split(",")]
    for b in batches:
        g = torch.Generator().manual_seed(b)
        x = torch.rand(b, 3, 32, 32, generator=g).to(dev)
        y = torch.randint(0, 10, (b,), generator=g).to(dev)
        steps, failed = {}, {}
        for s in settings:
            for m in METHODS:
                if s == "compile" and (m != "standard" or b != batches[-1]):
                    continue
                try:
                    t = time.perf_counter()
                    steps[(s, m)] = make_step(m, s, x, y, args, dev)
                    steps[(s, m)]()  # builds (and compiles) here, outside the timing
                    sync(dev)
                    if s == "compile":
                        print(f"  batch {b} compile {m}: first step (compile) {time.perf_counter() - t:.1f} s")
                except Exception as e:  # report and keep going: one failing setting must not hide the others
                    failed[(s, m)] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
                    steps.pop((s, m), None)
        med = interleaved_medians({k: v for k, v in steps.items()}, args.repeats, dev, warmup=1)
        for s in settings:
            cells = []
            for m in METHODS:
                if (s, m) in med:
                    cells.append(f"{m} {b / med[(s, m)]:8.0f}")
                elif (s, m) in failed:
                    cells.append(f"{m} failed ({failed[(s, m)]})")
            if not cells:
                continue
            print(f"batch {b:4d} {s:14s} img/s: " + "  ".join(cells))
            notes = []
            if all((s, m) in med for m in METHODS):
                notes.append(f"AT/((k+1) x std) {med[(s, 'at')] / ((args.steps + 1) * med[(s, 'standard')]):.3f}")
                notes.append(f"CIFS/AT {med[(s, 'cifs')] / med[(s, 'at')]:.3f}")
            notes += [f"{m} speed-up vs fp32 {med[('fp32', m)] / med[(s, m)]:.2f}x" for m in METHODS
                      if s != "fp32" and (s, m) in med and ("fp32", m) in med]
            print(f"           {s:14s} " + "  ".join(notes))
        model = create_model(args.arch, width=args.width).to(dev).eval()
        attack = {"pgd20": lambda: pgd(model, x, y, eps=8 / 255, alpha=0.8 / 255, steps=20, random_start=False)}
        t = interleaved_medians(attack, args.repeats, dev)["pgd20"]
        print(f"batch {b:4d} PGD-20 eval (float32): {b / t:8.0f} img/s")


if __name__ == "__main__":
    main()
