"""Our CIFS adversarial training step against the official CIFS code's, at equal arithmetic.

    python bench/vs_official.py --official /path/to/CIFS-checkout [--width 1] [--batch 128] [--repeats 5]

PATH is a checkout of the public CIFS code (GitHub HanshuYAN/CIFS) that you supply; nothing of it is
vendored here. Both sides run the same step on the same batch with the same weights: ResNet-18 with CIFS
on layer4 (probes nonlinear, linear), PGD-10 (eps 8/255, step 2/255, random start) on the joint loss
(beta 2) crafted in eval mode with frozen parameters, then one SGD update on the joint loss in train mode.
Timings interleave the two sides; peak memory is measured in a fresh subprocess per side (CPU: max RSS;
CUDA: max allocated). On CUDA a third side runs ours with its training defaults (bf16 autocast of every
pass, channels_last): the issue's "2x with our defaults" figure; a fourth adds `--cuda-graphs` (each attack
iteration replayed from a captured CUDA graph); the float32 side is the equal-math one. On CPU an `nchw`
side runs ours with every activation NCHW (`--layout nchw`), the share of the hybrid layout. Besides the
ratio of medians it prints each round's ratio (median and range): the sides of a round run back to back, so
a shared host that slows down for minutes moves both.

CPU allocator (`chanscope.accel.cpu_alloc`): `--cpu-alloc system|reuse` sets it for the whole process, so both codes
run with it (default system: glibc's defaults, as the official code runs). `--shipped` instead runs each side
in a worker process of its own, as each tool runs for its users: the official code with glibc's defaults,
chanscope with its default (`chanscope.accel.cpu_alloc.DEFAULT_CPU_ALLOC`), plus chanscope with the other mode
(`chanscope-reuse` or `chanscope-system`: the allocator's share); the parent still interleaves the rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from _timing import (  # bench/ is on sys.path when run as a script
    Worker,
    bench_parser,
    count_ops,
    embedded_batch,
    interleaved_times,
    medians,
    paired_ratios,
    peak_rss_mb,
    reset_peak_rss,
    serve,
    sync,
    training_step,
)

from chanscope.accel.cpu_alloc import CPU_ALLOC_MODES, DEFAULT_CPU_ALLOC
from chanscope.accel.layout import set_layout


def official_step_factory(path: str, dev: torch.device, batch: torch.Tensor, labels: torch.Tensor):
    sys.path.insert(0, path)
    import importlib

    gc = importlib.import_module("torch.autograd.gradcheck")  # the module (the package attribute is a function)
    if not hasattr(gc, "zero_gradients"):  # removed from torch after 1.9; their advertorch imports it
        def zero_gradients(x):
            if isinstance(x, torch.Tensor) and x.grad is not None:
                x.grad.detach_().zero_()
        gc.zero_gradients = zero_gradients
    from advertorch.attacks import LinfPGDAttack  # the official checkout's own advertorch
    from models.nets.resnet_CIFS import ResNet18_L4

    torch.manual_seed(0)
    net = ResNet18_L4().to(dev)

    def joint(outputs, target, beta=2.0):  # the official joint_CE_loss (is_joint=True), written out
        logits, raw = outputs
        loss = sum(F.cross_entropy(r, target) for r in raw) * (beta / len(raw)) + F.cross_entropy(logits, target)
        return loss * 3 / (beta + 1)

    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    adversary = LinfPGDAttack(net, loss_fn=joint, eps=8 / 255, nb_iter=10, eps_iter=2 / 255, rand_init=True,
                              clip_min=0.0, clip_max=1.0, targeted=False)

    def step() -> None:  # CIFAR10_Classifier._fit_one_epoch, one batch
        net.eval()
        for p in net.parameters():
            p.requires_grad = False
        data = adversary.perturb(batch, labels)
        for p in net.parameters():
            p.requires_grad = True
        net.train()
        opt.zero_grad()
        loss = joint(net(data, labels), labels)
        loss.backward()
        opt.step()

    return net, step


def ours_step_factory(dev: torch.device, batch: torch.Tensor, labels: torch.Tensor, official_net=None,
                      bf16: bool = False, graphs: bool = False, layout: str = "auto"):
    """Our step as `chanscope train` runs it: float32 (the equal-math side; on CPU with the hybrid layout
    of `--layout auto`, or `layout`), or bf16: autocast of every pass (CUDA: with channels_last, the CUDA
    defaults; CPU: `chanscope train --bf16`)."""
    from chanscope.models import create_model
    from chanscope.models.official import convert_official_state_dict
    from chanscope.train.config import build_config

    cfg = build_config(None, method="cifs", arch="resnet18", steps=10, step_size=2 / 255, bf16=bf16,
                       cuda_graphs=graphs)
    model = create_model("resnet18", feature_select="cifs", probes=["nonlinear", "linear"]).to(dev)
    set_layout(model, layout)
    if official_net is not None:  # same weights, no normalisation, as the official model
        model.load_state_dict({k: v.to(dev) for k, v in
                               convert_official_state_dict(official_net.state_dict()).items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    if bf16 and dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
    autocast = nullcontext
    if bf16:
        def autocast():
            return torch.autocast(dev.type, dtype=torch.bfloat16)

    return model, training_step(cfg, model, opt, batch, labels, autocast)


def _side_cmd(side: str, args, cpu_alloc: str) -> list[str]:
    return ([sys.executable, __file__, "--official", args.official, "--batch", str(args.batch), "--only", side,
             "--cpu-alloc", cpu_alloc] + (["--device", args.device] if args.device else []))


def _peak(side: str, args, cpu_alloc: str | None = None) -> float:
    """Peak memory of one side in a fresh process (MB)."""
    cmd = _side_cmd(side, args, cpu_alloc or args.cpu_alloc) + ["--repeats", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    ap = bench_parser(__doc__, batch=128, repeats=5)
    ap.add_argument("--official", required=True, help="Checkout of github.com/HanshuYAN/CIFS")
    ap.add_argument("--cpu-bf16", action="store_true",
                    help="CPU: add a side with `chanscope train --bf16` (pays on CPUs with AMX/AVX512-BF16).")
    ap.add_argument("--only", choices=["ours", "official", "defaults", "graphs", "bf16", "nchw"], default=None,
                    help=argparse.SUPPRESS)
    ap.add_argument("--memory-only", action="store_true", help="Skip the timing; measure peak memory only.")
    ap.add_argument("--no-memory", action="store_true", help="Skip the peak-memory subprocesses.")
    ap.add_argument("--cpu-alloc", choices=CPU_ALLOC_MODES, default="system",
                    help="CPU allocator of this process, so of both codes (chanscope.accel.cpu_alloc).")
    ap.add_argument("--shipped", action="store_true",
                    help="CPU: each side in its own process with its own default allocator (official: system, "
                    "chanscope: its default), plus chanscope with the other mode.")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from chanscope.accel.cpu_alloc import set_cpu_alloc
    from chanscope.device import pick_device

    set_cpu_alloc(args.cpu_alloc)

    dev = pick_device(args.device)
    x, y = embedded_batch(args.batch, dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    if args.only:  # weights do not matter for memory: each side builds only its own model
        # a timing worker gives ours the official weights (seeded, so both workers build the same net)
        onet = official_step_factory(args.official, dev, x, y)[0] if args.serve and args.only != "official" else None
        floor = reset_peak_rss()  # libraries, data and the batch are below this line
        step = (official_step_factory(args.official, dev, x, y)[1] if args.only == "official"
                else ours_step_factory(dev, x, y, onet, bf16=args.only in ("defaults", "graphs", "bf16"),
                                       graphs=args.only == "graphs",
                                       layout="nchw" if args.only == "nchw" else "auto")[1])
        if args.serve:
            serve(step)
            return
        step()  # warm-up outside the peak: cudnn.benchmark's trial workspaces are not the step's memory
        sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.repeats):
            step()
        sync(dev)
        peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
                else peak_rss_mb() - floor)
        print(json.dumps({"peak_mb": peak}))
        return

    if args.memory_only:
        _print_memory(args, dev)
        return
    if args.shipped:
        _shipped(args, dev)
        return
    onet, ostep = official_step_factory(args.official, dev, x, y)
    _, ustep = ours_step_factory(dev, x, y, onet)
    sides = {"official": ostep, "chanscope": ustep}
    if dev.type == "cuda":
        sides["defaults"] = ours_step_factory(dev, x, y, onet, bf16=True)[1]
        sides["graphs"] = ours_step_factory(dev, x, y, onet, bf16=True, graphs=True)[1]
    else:  # the hybrid layout's share: ours with every activation NCHW, as the official code runs
        sides["nchw"] = ours_step_factory(dev, x, y, onet, layout="nchw")[1]
    if args.cpu_bf16 and dev.type == "cpu":
        sides["bf16"] = ours_step_factory(dev, x, y, onet, bf16=True)[1]
    times = interleaved_times(sides, args.repeats, dev)
    med = medians(times)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, ResNet-18 CIFS (layer4), "
          f"batch {args.batch}, PGD-10 joint loss + joint update, median of {args.repeats}")
    for k, t in med.items():
        print(f"  {k:10s} {t * 1000:9.1f} ms/step  {args.batch / t:8.1f} img/s")
    print(f"  speed ratio chanscope / official = {med['official'] / med['chanscope']:.3f} (equal math, float32)")
    for side in sides:
        if side != "official":
            m, lo, hi = paired_ratios(times, "official", side)
            print(f"  per-round ratio official / {side}: median {m:.3f}, range {lo:.3f}-{hi:.3f} "
                  f"over {args.repeats} rounds")
    if "nchw" in med:
        print(f"  speed ratio chanscope --layout nchw / official = {med['official'] / med['nchw']:.3f} "
              f"(the hybrid layout adds {med['nchw'] / med['chanscope']:.3f}x)")
    ops = {k: count_ops(f) for k, f in sides.items()}
    print("  operators dispatched per step (host work): " + ", ".join(f"{k} {n}" for k, n in ops.items())
          + f"; official / chanscope {ops['official'] / ops['chanscope']:.2f}")
    if "defaults" in med:
        print(f"  speed ratio chanscope defaults (bf16, channels_last) / official = "
              f"{med['official'] / med['defaults']:.3f}")
        print(f"  speed ratio chanscope defaults + --cuda-graphs / official = {med['official'] / med['graphs']:.3f}")
    if "bf16" in med:
        print(f"  speed ratio chanscope --bf16 (CPU autocast) / official = {med['official'] / med['bf16']:.3f}")
    if not args.no_memory:
        _print_memory(args, dev)


def _shipped(args, dev: torch.device) -> None:
    """Each tool as its users run it: a process per side, each with its own default CPU allocator."""
    if dev.type != "cpu":
        raise SystemExit("--shipped compares CPU allocators; on CUDA run without it")
    other = next(m for m in CPU_ALLOC_MODES if m != DEFAULT_CPU_ALLOC)
    plan = {"official": ("official", "system"), "chanscope": ("ours", DEFAULT_CPU_ALLOC),
            f"chanscope-{other}": ("ours", other)}
    workers = {name: Worker(_side_cmd(side, args, alloc) + ["--serve"]) for name, (side, alloc) in plan.items()}
    try:
        times = interleaved_times(workers, args.repeats, dev)
    finally:
        for w in workers.values():
            w.close()
    med = medians(times)
    print(f"device {dev}, torch {torch.__version__}, ResNet-18 CIFS (layer4), batch {args.batch}, PGD-10 joint "
          f"loss + joint update, median of {args.repeats}; each side in its own process (allocator in brackets)")
    for k, t in med.items():
        print(f"  {k:16s} [{plan[k][1]:6s}] {t * 1000:9.1f} ms/step  {args.batch / t:8.1f} img/s")
    for side in list(plan)[1:]:
        m, lo, hi = paired_ratios(times, "official", side)
        print(f"  speed ratio {side} / official = {med['official'] / med[side]:.3f} (equal math); per round: "
              f"median {m:.3f}, range {lo:.3f}-{hi:.3f} over {args.repeats} rounds")
    by_mode = {alloc: med[name] for name, (side, alloc) in plan.items() if side == "ours"}
    print(f"  the reuse allocator's share: {by_mode['system'] / by_mode['reuse']:.3f}x")
    if not args.no_memory:
        po = _peak("official", args, "system")
        for side, (_, alloc) in list(plan.items())[1:]:
            pu = _peak("ours", args, alloc)
            print(f"  peak RSS above the process before the model: official {po:.0f} MB, {side} {pu:.0f} MB, "
                  f"ratio {pu / max(po, 1e-9):.3f}")


def _print_memory(args, dev: torch.device) -> None:
    po, pu = _peak("official", args), _peak("ours", args)
    unit = "CUDA max allocated" if dev.type == "cuda" else "peak RSS above the process before the model"
    print(f"  peak memory ({unit}): official {po:.0f} MB, chanscope {pu:.0f} MB, ratio {pu / max(po, 1e-9):.3f}")
    extra = ("defaults", "graphs") if dev.type == "cuda" else ("nchw", "bf16") if args.cpu_bf16 else ("nchw",)
    for side in extra:
        pd_ = _peak(side, args)
        print(f"  peak memory chanscope {side} {pd_:.0f} MB, ratio {pd_ / max(po, 1e-9):.3f}")


if __name__ == "__main__":
    main()
