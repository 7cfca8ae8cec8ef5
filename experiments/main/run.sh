#!/usr/bin/env bash
# Study 1 (main): 5 seeds of the full pipeline + the temperature control, then the tables and plots.
set -euo pipefail
cd "$(dirname "$0")/../.."
densepath -m experiment=main seed=0,1,2,3,4 resume=auto
[[ -n "${SKIP_REPORT:-}" ]] || python -m experiments.main.report outputs/studies/main --out experiments/main
