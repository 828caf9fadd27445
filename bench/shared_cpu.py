"""A training step on a CPU that another job shares: why stages ran many times slower than on a quiet machine.

Times one PGD-AT training step (the smoke scale's model and batch) in a fresh worker process per setting,
first on a quiet machine, then beside a competing process that runs the same step in a loop with torch's
defaults (as a second chanscope command, or the test suite, would), or with one thread (as a second seed of
`chanscope series --jobs 2`). Settings: torch's threads (default: one per core), OpenMP's wait policy
(active: idle threads spin; passive: they sleep), and one thread. Prints the median step time of each setting
and its ratio to the quiet default (a fair share of 2 cores between two jobs is a ratio of about 2), and what
`--jobs 2` gains: two one-thread seeds side by side against one seed after the other with the defaults.

    python bench/shared_cpu.py --repeats 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

SETTINGS = {  # name -> environment of the worker (torch's and OpenMP's own defaults: no variable set)
    "defaults": {"OMP_WAIT_POLICY": ""},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}


BASE = "defaults"


def worker(repeats: int, loop: bool) -> None:
    if not os.environ.get("OMP_WAIT_POLICY"):
        os.environ.pop("OMP_WAIT_POLICY", None)  # OpenMP's own default, whatever chanscope sets
    import torch

    from chanscope.accel.training import batch_loss
    from chanscope.data import load_data
    from chanscope.models import create_model
    from chanscope.train.config import build_config

    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    d = load_data("embedded")
    x, y = d.x_train[:64].float() / 255, d.y_train[:64]
    cfg = build_config("smoke", method="at", device="cpu")
    torch.manual_seed(0)
    model = create_model(cfg.arch, **cfg.model_kwargs())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        loss, _ = batch_loss(cfg, model, x, y, nullcontext)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    while loop or len(times) < repeats:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median": statistics.median(times), "threads": torch.get_num_threads()}))


def run(setting: str, repeats: int) -> dict:
    env = {**os.environ, **SETTINGS[setting]}
    out = subprocess.run([sys.executable, __file__, "--worker", "--repeats", str(repeats)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def beside(rival: str | None, setting: str, repeats: int) -> dict:
    """`setting`'s step time while a rival process with `rival`'s environment steps in a loop."""
    if rival is None:
        return run(setting, repeats)
    proc = subprocess.Popen([sys.executable, __file__, "--worker", "--loop"], env={**os.environ, **SETTINGS[rival]},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)  # the rival is past its start-up and stepping
        return run(setting, repeats)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.repeats, args.loop)
    flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()
                    if f.startswith(("avx512", "amx", "avx2"))})
    print(f"{os.cpu_count()} CPUs ({' '.join(flags)}); step: AT, smoke scale (resnet18 width 1/8, batch 64, "
          f"PGD-2); median of {args.repeats}; ratios to the quiet machine with {BASE}")
    rivals = [None, "defaults", "OMP_WAIT_POLICY=PASSIVE", "1 thread"]
    print(f"  {'measured process':26s}" + "".join(f"{'quiet' if r is None else 'rival: ' + r:>34s}" for r in rivals))
    base, med = None, {}
    for setting in SETTINGS:
        cells = []
        for rival in rivals:
            r = beside(rival, setting, args.repeats)
            base = base or r["median"]  # the first cell: the quiet machine, BASE
            med[setting, rival] = r["median"]
            cells.append(f"{r['median'] * 1000:9.1f} ms {r['median'] / base:5.2f}x ({r['threads']} thr)")
        print(f"  {setting:26s}" + "".join(f"{c:>34s}" for c in cells), flush=True)
    # `chanscope series --jobs 2` on two cores: two one-thread seeds side by side, against one seed after the
    # other in one process with chanscope's defaults (passive waiting, all cores)
    gain = 2 * med["OMP_WAIT_POLICY=PASSIVE", None] / med["1 thread", "1 thread"]
    print(f"two one-thread processes side by side do {gain:.2f}x the steps per second of one process with "
          "chanscope's defaults (series --jobs 2 against --jobs 1)")


if __name__ == "__main__":
    main()
