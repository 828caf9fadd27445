#!/usr/bin/env bash
# Issue 36's reruns after the cpu study (runs/cpu, corrected and published): the budget series and the
# five-defence comparison with the fixed adaptive attack, each step resumable (run the script again after a
# cut: finished stages are skipped, a cut training resumes from its last epoch). Unattended on 2 cores:
#   series 10000x16x5 (about 5 h), series 10000x10x4 (about 3.5 h), the comparison (several hours).
# The series' smallest budget is a copy of the cpu study (same recipe, same commands); the comparison starts
# from copies of the cpu study's trained models (standard, AT, CIFS and their natural runs: the same
# training commands, so their training is skipped; an evaluation the comparison asks differently is rerun in
# the copy, never in runs/cpu).
# usage: scripts/evidence_reruns.sh DATA [CPU_STUDY] [SERIES_DIR] [COMPARE_DIR]
set -euo pipefail
data=$1; study=${2:-runs/cpu}; series=${3:-runs/series}; compare=${4:-runs/compare-cpu}
mkdir -p logs "$series" "$compare"
chanscope series --budgets 10000x16x5 --seeds 2 --jobs 2 --data "$data" --out "$series"
chanscope series --budgets 10000x10x4 --seeds 2 --jobs 2 --data "$data" --out "$series"
[ -e "$series/5000x8x3" ] || cp -r "$study" "$series/5000x8x3"  # a copy: a stage rerun never touches runs/cpu
chanscope series --seeds 2 --summary-only --data "$data" --out "$series"
for run in standard at cifs-nat cifs seed1/standard seed1/at seed1/cifs-nat seed1/cifs; do
  if [ ! -e "$compare/$run" ]; then mkdir -p "$(dirname "$compare/$run")"; cp -r "$study/$run" "$compare/$run"; fi
done
chanscope compare --methods at,trades,cas,cifs,fsr --scale cpu --seeds 2 --jobs 2 --data "$data" --out "$compare"
