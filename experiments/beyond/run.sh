#!/usr/bin/env bash
# Study 2 (beyond the demonstrator, the broadened known-reward benchmark): per condition, 5 seeds (each seed
# its own hidden reward table) of experiment=beyond (SFT + half-data SFT, DPR on `logprob`, continued SFT fresh
# and seen, the decoders), then DPR on `log_ratio` against sft_half and half_data from each seed's SFT.
#   bash experiments/beyond/run.sh                 # every condition, then the report
#   bash experiments/beyond/run.sh soft noisy      # some conditions (e.g. two shells in parallel), no report
# EXTRA: more overrides for every job (e.g. EXTRA=threads=1); SEEDS: the seeds (default 0,1,2,3,4).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=outputs/studies/beyond
SEEDS=${SEEDS:-0,1,2,3,4}
read -r -a EXTRA <<< "${EXTRA:-}"
declare -A COND=(
  [soft]=""                                # the soft-optimal expert (tau 1, epsilon 0), 20k demonstrations
  [tempered]="data.expert.temperature=2"   # a tempered (flatter) expert
  [noisy]="data.expert.epsilon=0.2"        # an epsilon-noisy expert: a uniform action 20% of the time
  [demos1000]="data.demos=1000"            # 1000 demonstrations (same SFT steps: many passes)
  [underfit]="sft.steps=100"               # an underfit SFT (100 of the 1200 steps)
)
ORDER=(soft tempered noisy demos1000 underfit)
run_cond() {
  local name=$1
  read -r -a ov <<< "${COND[$name]}"
  densepath -m experiment=beyond "seed=$SEEDS" resume=auto "hydra.sweep.dir=$B/$name" "${ov[@]}" "${EXTRA[@]}"
  densepath -m experiment=beyond_ratio "seed=$SEEDS" baseline=sft_half,half_data resume=auto \
    "hydra.sweep.dir=$B/$name/ratio" "parent_run=$B/$name/seed\${seed}" "${ov[@]}" "${EXTRA[@]}"
}
if (($#)); then
  for c in "$@"; do [[ -v "COND[$c]" ]] || { echo "unknown condition $c; choose from ${ORDER[*]}" >&2; exit 2; }; done
  for c in "$@"; do run_cond "$c"; done
  exit 0
fi
for c in "${ORDER[@]}"; do run_cond "$c"; done
[[ -n "${SKIP_REPORT:-}" ]] || python -m experiments.beyond.report "$B" --out experiments/beyond
