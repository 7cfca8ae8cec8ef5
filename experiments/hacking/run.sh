#!/usr/bin/env bash
# Study 4 (reward-hacking watch): DPR without KL at lr 1e-4 from each seed's SFT of experiment=main (run
# experiments/main/run.sh first), recovered reward vs verifier success per step; the same on the graded path task
# (experiment=hacking_paths, from experiment=main_paths); and on real text (experiment=hacking_instruct, from the
# instruct study: recovered reward vs IFBench pass rate of DPR's answers over training). EXTRA: more overrides.
set -euo pipefail
cd "$(dirname "$0")/../.."
read -r -a EXTRA <<< "${EXTRA:-}"
S=seed=${SEEDS:-0,1,2,3,4}
have() {  # the parent study has run (its seed dirs exist); otherwise say what to run first
  [[ -d "outputs/studies/$1" ]] && return 0
  echo "hacking: skipping $2: outputs/studies/$1 is missing (run $3 first)" >&2
  return 1
}
for pair in "hacking main" "hacking_paths main_paths"; do
  read -r exp parent <<< "$pair"
  have "$parent" "$exp" experiments/main/run.sh || continue
  densepath -m experiment=$exp "$S" reward=log_ratio,logprob dpr.module.kl=none resume=auto "${EXTRA[@]}"
  densepath -m experiment=$exp "$S" reward=logprob dpr.module.kl=k3 dpr.module.kl_coef=1.0 dpr.module.lr=1e-5 \
    resume=auto "${EXTRA[@]}"
done
IS=${INSTRUCT_SEEDS:-0,1,2}
done_instruct=1  # every instruct seed must have finished (DONE): a half-run parent has no DPR start to watch
for k in ${IS//,/ }; do [[ -f outputs/studies/instruct/seed$k/DONE ]] || done_instruct=0; done
if [[ $done_instruct == 1 ]]; then
  densepath -m experiment=hacking_instruct "seed=$IS" resume=auto "${EXTRA[@]}"
else
  echo "hacking: skipping hacking_instruct: outputs/studies/instruct/seed{$IS} not all finished (run experiments/instruct/run.sh first)" >&2
fi
[[ -n "${SKIP_REPORT:-}" ]] || {
  [[ ! -d outputs/studies/hacking ]] || python -m experiments.hacking.report outputs/studies/hacking \
    --out experiments/hacking --main outputs/studies/main --ablations outputs/studies/ablations
  [[ ! -d outputs/studies/hacking_paths ]] || python -m experiments.hacking.report outputs/studies/hacking_paths \
    --out experiments/hacking/paths --main outputs/studies/main_paths
  [[ ! -d outputs/studies/hacking_instruct ]] || python -m experiments.hacking.report \
    outputs/studies/hacking_instruct --out experiments/hacking/instruct
}
