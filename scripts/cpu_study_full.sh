#!/usr/bin/env bash
# The whole cpu study, unattended, from an empty folder (or a cut one: every step skips what is done):
# both seeds side by side as one-thread processes (scripts/cpu_study_chain.sh), then the seeds' records
# merged, `chanscope reproduce` for report.md and the verdicts, and `chanscope sensitivity` (issue 32).
# About 2.5 h on 2 cores with nothing else running: start it first in a session, logs in logs/.
# L2 (issue 34): a third argument l2 runs every training, attack and activation study at L2 eps 0.5, without
# the sensitivity grid.
# usage: scripts/cpu_study_full.sh STUDY_DIR DATA [THREAT_MODEL]
set -euo pipefail
out=$1; data=$2; threat=${3:-linf}
here=$(dirname "$0")
mkdir -p logs "$out"
pids=()
for k in 0 1; do
  "$here/cpu_study_chain.sh" "$out" "$k" "$data" "$threat" > "logs/chain-cpu-$threat-s$k.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
python "$here/study_seed.py" "$out" --merge
chanscope reproduce --scale cpu --seeds 2 --no-cifs-scratch --threat-model "$threat" --data "$data" --out "$out"
if [ "$threat" = linf ]; then chanscope sensitivity --study "$out"; fi
