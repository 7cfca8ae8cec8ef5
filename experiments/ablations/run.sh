#!/usr/bin/env bash
# Study 3 (ablations): DPR from each seed's SFT of experiments/beyond's `soft` condition (run
# `bash experiments/beyond/run.sh soft` first), one axis at a time around the paper's setting (log_ratio against
# the half-way snapshot, gamma 1, T 1, no KL), on the broadened known-reward benchmark; then k1 vs k3 over a
# beta grid (compared at equal measured KL in the report). EXTRA: more overrides for every job.
set -euo pipefail
cd "$(dirname "$0")/../.."
read -r -a EXTRA <<< "${EXTRA:-}"
S=seed=${SEEDS:-0,1,2,3,4}
run() { densepath -m experiment=ablate "$S" resume=auto "$@" "${EXTRA[@]}"; }
run                                                                        # reference
run dpr.module.gamma=0.99,0.9                                              # discount
run baseline=sft_fraction baseline.fraction=0.1,0.25,0.75,0.9              # snapshot fraction
run baseline=half_data,base,uniform,ensemble                               # the paper's half-data pi_base; others
run reward=logprob,sparse                                                  # baseline removal; sparse vs dense
run sampler.temperature=0.7,1.3                                            # sampling temperature
run dpr.module.kl=k1,k3 dpr.module.kl_coef=0.01,0.1,1.0                    # KL: k1 vs k3 over a beta grid
[[ -n "${SKIP_REPORT:-}" ]] || python -m experiments.ablations.report outputs/studies/ablations --out experiments/ablations
