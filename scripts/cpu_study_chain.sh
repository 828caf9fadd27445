#!/usr/bin/env bash
# One seed of the cpu study end to end as one-thread processes: train (scripts/train_study_seed.sh), then the
# seed's control, evaluations and activation studies (scripts/study_seed.py). Two seeds run side by side.
# usage: scripts/cpu_study_chain.sh STUDY_DIR SEED_INDEX DATA [THREAT_MODEL]
set -euo pipefail
out=$1; k=$2; data=$3; threat=${4:-linf}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
"$(dirname "$0")/train_study_seed.sh" "$out" "$k" "$data" "$threat"
python "$(dirname "$0")/study_seed.py" "$out" --index "$k" --scale cpu --seeds 2 --data "$data" --threat-model "$threat"
