#!/usr/bin/env bash
# One prepared GPU check (a few minutes on one H100/H200). From the repository root on the GPU machine:
#   bash bench/gpu.sh [OFFICIAL_CIFS_CHECKOUT]
# First checks the CUDA-graph training attack against the eager one (bench/graph_check.py), then prints
# images/s of standard, AT and CIFS training steps (ResNet-18 full width, batch 128 and 512; float32,
# bf16 + channels_last (our defaults), plus --cuda-graphs, and torch.compile), PGD-20 eval throughput, and, when a
# checkout of github.com/HanshuYAN/CIFS is given, the side-by-side comparison with the official training step;
# last, one paper-scale epoch of every method and the smoke study on CUDA (the whole GPU path).
set -uo pipefail
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
timeout ${GRAPH_CHECK_TIMEOUT:-90} $PY bench/graph_check.py --batch 128 --steps 10 --repeats 5
timeout ${GPU_STEPS_TIMEOUT:-240} $PY bench/gpu_steps.py --batches 512,128 --steps 10 --repeats 5 --compile
if [ $# -ge 1 ]; then
  timeout ${VS_OFFICIAL_TIMEOUT:-150} $PY bench/vs_official.py --official "$1" --batch 128 --repeats 5 --device cuda
fi
# The whole GPU path in one run: one paper-scale epoch of each method (full-width ResNet-18, the paper's recipe;
# DATA=path for the CIFAR-10 archive, default the embedded set), then the smoke study on CUDA.
OUT=${OUT:-/tmp/chanscope-gpu}
for m in standard at trades cas cifs fsr; do
  timeout ${EPOCH_TIMEOUT:-240} $PY -m chanscope.cli.app train --method $m --preset paper --epochs 1 --device cuda \
    --data ${DATA:-embedded} --out $OUT/epoch-$m || echo "train $m (one paper-scale epoch): FAILED"
done
timeout ${SMOKE_TIMEOUT:-420} $PY -m chanscope.cli.app reproduce --scale smoke --device cuda --out $OUT/smoke \
  || echo "smoke study on CUDA: FAILED"
