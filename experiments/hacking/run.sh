#!/usr/bin/env bash
# Study 4 (reward-hacking watch): DPR without KL at lr 1e-4 from each seed's SFT of experiment=main
# (run experiments/main/run.sh first), recovered reward vs verifier success per step.
set -euo pipefail
cd "$(dirname "$0")/../.."
densepath -m experiment=hacking seed=0,1,2,3,4 reward=log_ratio,logprob dpr.module.kl=none resume=auto
densepath -m experiment=hacking seed=0,1,2,3,4 reward=logprob dpr.module.kl=k3 dpr.module.kl_coef=1.0 dpr.module.lr=1e-5 resume=auto
[[ -n "${SKIP_REPORT:-}" ]] || python -m experiments.hacking.report outputs/studies/hacking --out experiments/hacking \
  --main outputs/studies/main --ablations outputs/studies/ablations
