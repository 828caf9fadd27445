#!/usr/bin/env bash
# Issue 36's reruns after the cpu study (corrected and published): the budget series and the five-defence
# comparison with the fixed adaptive attack. Every step is resumable: run the script again after a cut
# (finished stages are skipped, a cut training resumes from its last epoch). Longer than a session on
# 2 cores, so a cut folder travels in git: `python scripts/carry.py pack runs/compare-cpu
# state/compare.tar.gz [--without ...]` before a session ends; this script unpacks state/series.tar.gz and
# state/compare.tar.gz into a missing runs/series and runs/compare-cpu.
# On 2 cores (one-thread seeds side by side): series 10000x16x5 about 5 h, the comparison about 5-6 h,
# series 10000x10x4 about 1.5 h (last: optional). The series' 5000x8x3 stages (trainings, evaluations,
# AutoAttack) have the comparison's commands, so `cp -rp` copies of its runs count as done (not yet run).
# The series' smallest budget is the cpu scale's recipe: its trainings are copies of the comparison's
# (standard, AT, CIFS and their natural runs: the same commands), or of the cpu study's where it is on
# this machine; an evaluation the series asks differently is rerun in the copy.
# usage: scripts/evidence_reruns.sh DATA [SERIES_DIR] [COMPARE_DIR] [CPU_STUDY]
set -euo pipefail
data=$1; series=${2:-runs/series}; compare=${3:-runs/compare-cpu}; study=${4:-runs/cpu}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p logs
if [ ! -e "$series" ] && [ -e state/series.tar.gz ]; then python "$here/carry.py" unpack state/series.tar.gz "$series"; fi
if [ ! -e "$compare" ] && [ -e state/compare.tar.gz ]; then python "$here/carry.py" unpack state/compare.tar.gz "$compare"; fi
mkdir -p "$series" "$compare"
chanscope series --budgets 10000x16x5 --seeds 2 --jobs 2 --data "$data" --out "$series"
if [ -d "$study" ]; then  # the cpu study's trainings are the comparison's: the same commands
  for run in standard at cifs-nat cifs seed1/standard seed1/at seed1/cifs-nat seed1/cifs; do
    if [ -d "$study/$run" ] && [ ! -e "$compare/$run" ]; then
      mkdir -p "$(dirname "$compare/$run")"; cp -rp "$study/$run" "$compare/$run"
    fi
  done
fi
chanscope compare --methods at,trades,cas,cifs,fsr --scale cpu --seeds 2 --jobs 2 --data "$data" --out "$compare"
for run in standard at cifs-nat cifs seed1/standard seed1/at seed1/cifs-nat seed1/cifs; do
  if [ ! -e "$series/5000x8x3/$run" ]; then
    mkdir -p "$(dirname "$series/5000x8x3/$run")"; cp -rp "$compare/$run" "$series/5000x8x3/$run"
  fi
done
chanscope series --budgets 5000x8x3 --seeds 2 --jobs 2 --data "$data" --out "$series"
chanscope series --budgets 10000x10x4 --seeds 2 --jobs 2 --data "$data" --out "$series"
chanscope series --seeds 2 --summary-only --data "$data" --out "$series"
