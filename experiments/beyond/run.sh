#!/usr/bin/env bash
# Study 2 (beyond the demonstrator, known-reward MDP): 5 seeds, then the tables and plots.
set -euo pipefail
cd "$(dirname "$0")/../.."
densepath -m experiment=beyond seed=0,1,2,3,4 resume=auto
# confirmation of the configuration selected on `val` (the ablations): fresh seeds, eval split
densepath -m experiment=beyond seed=5,6,7,8,9 hydra.sweep.dir=outputs/studies/beyond_confirm resume=auto
[[ -n "${SKIP_REPORT:-}" ]] || {
  python -m experiments.beyond.report outputs/studies/beyond --out experiments/beyond
  python -m experiments.beyond.report outputs/studies/beyond_confirm --out experiments/beyond/confirm
}
