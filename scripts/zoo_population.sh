#!/usr/bin/env bash
# The zoo's population (issue 33) where the published studies' run folders are gone: 6 methods x 2 seeds x
# 2 training lengths (3 and 8 epochs) at the smoke scale's network (ResNet-18 at width 1/8, 1000 images, PGD-2)
# on the CIFAR-10 archive: 24 models whose robust accuracy spreads from chance upwards, trained two at a time
# as one-thread processes (a run trained before is skipped, a cut one resumed), then `chanscope zoo` over them.
# usage: scripts/zoo_population.sh POP_DIR DATA [ZOO_DIR]
set -euo pipefail
pop=$1; data=$2; zoo=${3:-$pop/zoo}
mkdir -p "$pop"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
train() {  # method epochs seed
  local out=$pop/$1-e$2-s$3
  if [ -f "$out/summary.json" ]; then return; fi
  local resume=(); [ -f "$out/last.pt" ] && resume=(--resume)
  chanscope train --method "$1" --preset smoke --epochs "$2" --seed "$3" --data "$data" --out "$out" "${resume[@]}"
}
for seed in 0 1; do
  (for m in standard at trades cifs cas fsr; do for e in 3 8; do train "$m" "$e" "$seed"; done; done) \
    > "$pop/train-s$seed.log" 2>&1 &
done
wait
unset OMP_NUM_THREADS MKL_NUM_THREADS
chanscope zoo --model "$pop" --data "$data" --n 500 --attack pgd20 --aa-n 0 --out "$zoo"
