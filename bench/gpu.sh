#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes on one H100/H200). Run from the repository root on the GPU machine:
#   bash bench/gpu.sh [OFFICIAL_CIFS_CHECKOUT]
# Prints images/s of standard, AT and CIFS training steps (ResNet-18 full width, batch 128 and 512, with and
# without bf16 / channels_last / compile), PGD-20 throughput, and the official comparison when a checkout is given.
set -uo pipefail
PY=${PY:-python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY - <<'PYEOF'
import time, torch
from contextlib import nullcontext
from chanscope.models import create_model
from chanscope.train.config import build_config
from chanscope.train.loop import batch_loss
from chanscope.attacks import pgd
dev = torch.device("cuda")
torch.backends.cudnn.benchmark = True
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
def rate(fn, b, reps=5):
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps): fn()
    torch.cuda.synchronize()
    return b * reps / (time.perf_counter() - t)
for b in (128, 512):
    x = torch.rand(b, 3, 32, 32, device=dev); y = torch.randint(0, 10, (b,), device=dev)
    for bf16, cl, comp in ((False, False, False), (True, True, False), (True, True, True)):
        row = []
        for method in ("standard", "at", "cifs"):
            cfg = build_config(None, method=method, steps=10)
            torch.manual_seed(0)
            m = create_model("resnet18", **cfg.model_kwargs()).to(dev)
            if cl: m = m.to(memory_format=torch.channels_last)
            fm = torch.compile(m) if (comp and method == "standard") else m  # compile where it is supported
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
            ac = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else nullcontext
            xi = x.contiguous(memory_format=torch.channels_last) if cl else x
            def step():
                m.train(); loss, _ = batch_loss(cfg, fm, xi, y, ac)
                opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
            try:
                row.append(f"{method} {rate(step, b):8.0f}")
            except Exception as e:  # report, keep going
                row.append(f"{method} failed ({type(e).__name__})")
        print(f"batch {b:4d} bf16={bf16!s:5} channels_last={cl!s:5} compile={comp!s:5}: " + "  ".join(row) + " img/s")
    m = create_model("resnet18").to(dev).eval()
    print(f"batch {b:4d} PGD-20 eval: {rate(lambda: pgd(m, x, y, eps=8/255, alpha=0.8/255, steps=20, random_start=False), b):8.0f} img/s")
PYEOF
if [ $# -ge 1 ]; then
  $PY bench/vs_official.py --official "$1" --batch 128 --repeats 5 --device cuda
fi
$PY bench/train_step.py --width 1 --batch 128 --steps 10 --repeats 5 --device cuda
