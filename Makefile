# natscale: `make demo` runs the main job, `make test` runs the whole suite. Both install first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch: pinned CPU build on machines without a CUDA driver (else pip pulls GBs of CUDA wheels).
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
EXTRAS ?= dev,mpi

export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export NATSCALE_CACHE := $(CURDIR)/.cache/natscale
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install sysdeps demo test lint format clean
install: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml
	bash scripts/sysdeps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	DS_BUILD_OPS=0 $(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -m natscale.cli.main env --build-ops  # JIT ops into .cache/torch_extensions, once
	touch $@

demo: install
	bash scripts/demo.sh

# Test files run on up to 4 worker processes, a file's tests on one worker (module fixtures are
# built once); PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= auto
test: install
	$(PY) -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --maxprocesses=4 --dist loadfile) $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .cache build *.egg-info runs
