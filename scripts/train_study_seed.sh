#!/usr/bin/env bash
# Train one seed's models of the cpu study exactly as `chanscope reproduce --scale cpu --no-cifs-scratch`
# records them (its pipeline.json commands), as a one-thread process, so two seeds train side by side on two
# cores; `chanscope reproduce` on the same folder then finds them trained and evaluates. Resumable: a cut
# training continues from its last.pt.
# usage: scripts/train_study_seed.sh STUDY_DIR SEED DATA [THREAT_MODEL]   (linf, the default, or l2)
set -euo pipefail
out=$1; seed=$2; data=$3; threat=${4:-linf}
dir=$out; [ "$seed" -gt 0 ] && dir=$out/seed$seed
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() {  # name, then train flags
  local name=$1; shift
  if [ -f "$dir/$name/summary.json" ]; then echo "$name: trained"; return; fi
  local resume=(); [ -f "$dir/$name/last.pt" ] && resume=(--resume)
  local tm=(); [ "$threat" != linf ] && tm=(--threat-model "$threat")
  chanscope train "$@" --preset cpu "${tm[@]}" --data "$data" --seed "$seed" --out "$dir/$name" "${resume[@]}"
}
run standard --method standard
run at --method at --init "$dir/standard/last.pt"
run cifs-nat --method cifs --natural
run cifs --method cifs --init "$dir/cifs-nat/last.pt"
