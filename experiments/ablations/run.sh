#!/usr/bin/env bash
# Study 3 (ablations): DPR from each seed's SFT of experiment=beyond (run `bash experiments/beyond/run.sh soft` first),
# one axis at a time around the paper's setting (log_ratio @ half-way snapshot, gamma 1, T 1, no KL).
set -euo pipefail
cd "$(dirname "$0")/../.."
S=seed=0,1,2,3,4
densepath -m experiment=ablate $S resume=auto                                             # reference
densepath -m experiment=ablate $S resume=auto dpr.module.gamma=0.99,0.9                          # discount
densepath -m experiment=ablate $S resume=auto baseline=sft_fraction baseline.fraction=0.1,0.25,0.75,0.9
densepath -m experiment=ablate $S resume=auto reward=logprob,sparse                        # no baseline; sparse
densepath -m experiment=ablate $S resume=auto baseline=base,uniform,ensemble               # other baselines
densepath -m experiment=ablate $S resume=auto sampler.temperature=0.7,1.3                     # sampling temperature
densepath -m experiment=ablate $S resume=auto dpr.module.kl=k3 dpr.module.kl_coef=0.1,1.0              # KL (reference: 0)
densepath -m experiment=ablate $S resume=auto reward=logprob dpr.module.kl=k3 dpr.module.kl_coef=0.1,1.0,10.0   # logprob: the entropy cost vs KL
[[ -n "${SKIP_REPORT:-}" ]] || python -m experiments.ablations.report outputs/studies/ablations --out experiments/ablations
