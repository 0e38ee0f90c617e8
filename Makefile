# Quick start: `make demo` (set up + short training run) and `make test` (set up + lint + types + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,envs,dmc,atari

export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export MUJOCO_GL ?= egl

.PHONY: setup test lint typecheck pytest demo bench clean

setup: $(STAMP)

# torch is pinned and installed first: a resolver left to choose torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	# optional integrations (third-party envs, W&B, Minari, the Hub): their tests skip when one fails
	for extra in thirdparty wandb minari hub; do \
		$(BIN)/pip install --quiet -e ".[$$extra]" || echo "note: the $$extra extra did not install; its tests will skip"; \
	done
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/worldflux demo

bench: $(STAMP)
	$(BIN)/python benchmarks/state_bench.py
	$(BIN)/python benchmarks/model_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
