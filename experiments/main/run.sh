#!/usr/bin/env bash
# Study 1 (main): 5 seeds of the full pipeline on the built-in tasks (experiment=main) and on the graded path
# task (experiment=main_paths), then the tables and plots. EXTRA: more overrides for every job (e.g.
# EXTRA=threads=1); SEEDS: the seeds (default 0,1,2,3,4).
set -euo pipefail
cd "$(dirname "$0")/../.."
read -r -a EXTRA <<< "${EXTRA:-}"
S=seed=${SEEDS:-0,1,2,3,4}
densepath -m experiment=main "$S" resume=auto "${EXTRA[@]}"
densepath -m experiment=main_paths "$S" resume=auto "${EXTRA[@]}"
[[ -n "${SKIP_REPORT:-}" ]] || {
  python -m experiments.main.report outputs/studies/main --out experiments/main
  python -m experiments.main.report outputs/studies/main_paths --out experiments/main/paths
}
