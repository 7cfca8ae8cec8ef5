#!/usr/bin/env bash
# GPU check of densepath (benchmarks/gpu_check.py): the CUDA tests, CUDA-vs-CPU scoring and one bf16 DPR
# step on the real-model workload, in at most 5 minutes on one GPU; ends with ONE markdown table.
#
#   here (registry access):  make gpu-wheels                 # fills benchmarks/wheels/ (~2 MB, pure Python)
#   on the GPU machine:      bash benchmarks/gpu_check.sh [--require-gpu] [--layers N] [--smoke] ...
#   CPU smoke test:          OMP_NUM_THREADS=1 bash benchmarks/gpu_check.sh --cpu-smoke --smoke --layers 2
#
# The GPU machine has torch, transformers, peft and lightning but no registry access and no Hydra,
# omegaconf, wandb, datasets or gguf. densepath runs from src/ (PYTHONPATH, no install); pytest and its
# pure-Python deps, where missing, are installed from benchmarks/wheels/ into a private target folder
# (no change to the system site-packages). The folder may be absent when nothing is missing.
# Exit status: 0 all rows passed or skipped, 1 a row failed (or --require-gpu without CUDA).
# Environment: PYTHON (interpreter; default .venv/bin/python if present, else python3),
# GPU_CHECK_BUDGET_S (seconds for everything, default 300), GPU_CHECK_SMOKE=1 (= --smoke).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
BUDGET_S=${GPU_CHECK_BUDGET_S:-300}
WHEELS=benchmarks/wheels
SITE="${TMPDIR:-/tmp}/densepath_gpu_check_site"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

# What must already be there (no wheels for these: they are large and platform-specific).
if ! "$PYTHON" -c "import torch, transformers, peft, lightning" 2>/dev/null; then
    echo "gpu_check: $PYTHON cannot import torch, transformers, peft and lightning; install them (or set PYTHON)." >&2
    "$PYTHON" -c "import torch, transformers, peft, lightning" 2>&1 | tail -1 >&2
    exit 1
fi

# pytest and its deps: the requirements (pinned in the wheels folder) whose module is missing or too old.
missing=$("$PYTHON" - <<'EOF'
import importlib.util, sys
need = [("pytest", "pytest"), ("pluggy", "pluggy"), ("iniconfig", "iniconfig"), ("pygments", "pygments")]
if sys.version_info < (3, 11):
    need += [("exceptiongroup", "exceptiongroup"), ("tomli", "tomli")]
out = [req for mod, req in need if importlib.util.find_spec(mod) is None]
try:
    import packaging
    if int(packaging.__version__.split(".")[0]) < 24:  # pytest 9 needs packaging >= 24
        out.append("packaging")
except ImportError:
    out.append("packaging")
print(" ".join(out))
EOF
)
if [[ -n "$missing" ]]; then
    echo "gpu_check: missing: $missing; installing from $WHEELS into $SITE"
    if [[ ! -d "$WHEELS" ]]; then
        echo "gpu_check: $WHEELS is missing: run \`make gpu-wheels\` on a machine with registry access and bring" \
            "the folder (the device tool: carry [\"$WHEELS\"]); the pytest row will fail" >&2
    elif "$PYTHON" -m pip --version >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --upgrade \
            --find-links "$WHEELS" --target "$SITE" $missing || echo "gpu_check: pip install failed" >&2
    else  # no pip: a pure-Python wheel is a zip of the package; unpack it onto the path
        for req in $missing; do
            for whl in "$WHEELS"/"$req"-*.whl; do
                [[ -f "$whl" ]] && "$PYTHON" -m zipfile -e "$whl" "$SITE"
            done
        done
    fi
    export PYTHONPATH="$SITE:$PYTHONPATH"
fi

# The check itself, under a hard limit; it prints the table. If it dies before (killed, timed out,
# crashed), print the rows it finished plus one failed row from here.
ROWS=$(mktemp)
left=$((BUDGET_S - SECONDS))
timeout --kill-after=10 "$left" "$PYTHON" -m benchmarks.gpu_check --budget-s $((left - 15)) --rows-file "$ROWS" "$@"
rc=$?
if [[ $rc -ne 0 && $rc -ne 1 ]]; then
    echo
    echo "## GPU check (incomplete: benchmarks/gpu_check.py exited with $rc)"
    echo
    echo "| check | result | detail |"
    echo "|---|---|---|"
    awk -F'\t' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$ROWS"
    why="crashed"
    [[ $rc -eq 124 || $rc -eq 137 ]] && why="killed at the ${BUDGET_S} s limit"
    [[ $rc -eq 2 ]] && why="bad arguments (see above)"
    echo "| gpu_check.py | failed | exit $rc: $why |"
    rc=1
fi
rm -f "$ROWS"
exit $rc
