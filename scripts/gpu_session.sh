#!/usr/bin/env bash
# The README's GPU session: everything one lent H100/H200 call runs, inside 9.5 minutes (gpu scale: ~6 min).
#   bash scripts/gpu_session.sh
# Needs, in device_carry/ (git-ignored; copied there by the user): cifar10-jpeg.tar.gz, cifs_official/ (a
# checkout of github.com/HanshuYAN/CIFS, for the side-by-side benchmark), whl/torchattacks-*.whl (AutoAttack).
# Steps: install; bench/gpu.sh; `reproduce --scale $SCALE` (standard, AT, CIFS at full width on all 50k images)
# with a time limit; the same AT run in float32 for 3 epochs (does bf16 change accuracy?); reproduce again
# (it continues with the stages left, AutoAttack last). Logs and results, no checkpoints, go to $OUT.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CHANSCOPE_CACHE=/tmp/chanscope-cache COLUMNS=150
C="$(dirname "$(python3 -c "import sys; print(sys.executable)")")/chanscope"  # the installed CLI (python3 -m would pick ./chanscope)
D=${DATA:-device_carry/cifar10-jpeg.tar.gz}
SCALE=${SCALE:-gpu}  # smoke: a CPU dry run of this script
T0=$(date +%s)
BUDGET=${BUDGET:-560}  # seconds for the whole script
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
stamp() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }

stamp install
python3 -m pip install -q --no-deps --no-build-isolation --no-index . > "$OUT/install.log" 2>&1 \
  || { tail -20 "$OUT/install.log"; exit 1; }
if ls device_carry/whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-index device_carry/whl/*.whl >> "$OUT/install.log" 2>&1
fi
python3 -c "import torch, chanscope; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', 'chanscope', chanscope.__version__)" || exit 1
python3 -c "import time; from chanscope.data import load_data; t=time.time(); d=load_data('$D'); print('decoded', len(d.y_train), len(d.y_test), f'{time.time()-t:.1f}s')"

if [ -z "${SKIP_BENCH:-}" ]; then
  stamp bench
  GRAPH_CHECK_TIMEOUT=60 GPU_STEPS_TIMEOUT=150 VS_OFFICIAL_TIMEOUT=80 bash bench/gpu.sh device_carry/cifs_official 2>&1 | tee "$OUT/bench.log"
fi

stamp "reproduce (first pass)"
timeout $(( $(left) - 130 )) $C reproduce --scale $SCALE --no-cifs-scratch --data $D --out runs/reproduce-gpu \
  --time-limit ${REPRO_MINUTES:-2.5} > "$OUT/reproduce.log" 2>&1
grep -v "━" "$OUT/reproduce.log" | tail -25

stamp "AT in float32, 2 epochs (bf16 check)"
timeout $(( $(left) - 75 )) python3 - <<PYEOF 2>&1 | tee "$OUT/fp32.log"
from chanscope.scales import SCALES
from chanscope.train import build_config
from chanscope.workflows.training import fit as train
from chanscope.workflows.training import TrainInterrupted
import pandas as pd
sc = SCALES["$SCALE"]
cfg = build_config(sc.name, **sc.train, seed=0, data="$D", method="at",
                   init="runs/reproduce-gpu/standard/last.pt", bf16=False)
try:
    train(cfg, "runs/gpu-at-fp32", stop_after=2)
except TrainInterrupted:
    pass
a = pd.read_csv("runs/reproduce-gpu/at/metrics.csv").set_index("epoch")
b = pd.read_csv("runs/gpu-at-fp32/metrics.csv").set_index("epoch")
cols = ["train_loss", "train_acc", "test_nat_acc", "test_pgd_acc", "seconds"]
print(pd.concat({"bf16": a[cols], "fp32": b[cols]}, axis=1).head(2).to_string())
PYEOF

stamp "reproduce (continue)"
timeout $(( $(left) - 10 )) $C reproduce --scale $SCALE --no-cifs-scratch --data $D --out runs/reproduce-gpu \
  --time-limit $(awk "BEGIN{print ($(left) - 70) / 60}") > "$OUT/reproduce2.log" 2>&1
grep -v "━" "$OUT/reproduce2.log" | tail -25
tar czf "$OUT/runs.tar.gz" --exclude='*.pt' runs/reproduce-gpu runs/gpu-at-fp32 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,temperature.gpu --format=csv,noheader
stamp done
