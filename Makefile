# Set-up is pinned here: torch==2.13.0 is the CPU build; a looser pin pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
NUMPY_PIN := numpy==2.4.6

.PHONY: setup test test-all lint demo bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN) $(NUMPY_PIN)
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

setup: $(STAMP)

## The test command: fast suite (unit tests + doctests), slow runs excluded.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

## Everything, including tests marked slow.
test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples conftest.py
	$(BIN)/ruff format --check src tests benchmarks examples conftest.py
	$(BIN)/mypy

## The main job on embedded data (no network).
demo: $(STAMP)
	$(BIN)/python examples/recover_transform.py

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench_warp.py --out benchmarks/results

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
