#!/usr/bin/env bash
# The whole cpu study, unattended, from an empty folder (or a cut one: every stage skips what is done): both
# seeds side by side as one-thread processes (`reproduce --jobs 2`), report.md with the verdicts, and
# `chanscope sensitivity` (issue 32). About 2 h on 2 cores with nothing else running: start it first in a
# session, logs in logs/ and <out>/pipeline-seed<s>.log.
# L2 (issue 34): a third argument l2 runs every training, attack and activation study at L2 eps 0.5, without
# the sensitivity grid.
# usage: scripts/cpu_study_full.sh STUDY_DIR DATA [THREAT_MODEL]
set -euo pipefail
out=$1; data=$2; threat=${3:-linf}
mkdir -p logs
chanscope reproduce --scale cpu --seeds 2 --jobs 2 --no-cifs-scratch --threat-model "$threat" --data "$data" --out "$out"
if [ "$threat" = linf ]; then chanscope sensitivity --study "$out"; fi
