# Two entry points, each from a fresh machine: `make run` trains configs/mpg.yaml,
# `make test` runs lint, type check and the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint typecheck pytest clean fuzz

setup: $(STAMP)

# The CPU build of torch goes in first: installed that way, the `torch>=2.4` requirement is
# already met, and pip never reaches for the several-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/mlpkit train configs/mpg.yaml --plots wait

lint: setup
	$(BIN)/ruff check src tests data bench
	$(BIN)/ruff format --check src tests data bench

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Hostile-input fuzzer (issue 14), on demand: generated configs and CSVs through check and
# train under a memory cap; prints cases tried and violations by class (saved under
# $TMPDIR/mlpkit-fuzz unless --out says). make test runs 25 (tests/test_fuzz.py).
# E.g. make fuzz FUZZ_ARGS="--cases 500 --jobs 2 --seed 3"
FUZZ_ARGS ?= --cases 2000
fuzz: setup
	$(BIN)/python tests/fuzz_harness.py $(FUZZ_ARGS)

# Benchmark of mlpkit beside its peers (bench/README.md): on demand, never part of `make test`.
# The peers (lightning, keras, skorch) live in bench/.venv only, never in mlpkit's dependencies.
.PHONY: bench bench-env
BENCH_STAMP := bench/.venv/.installed

bench-env: $(BENCH_STAMP)

$(BENCH_STAMP): bench/requirements.txt pyproject.toml bench/setup.sh
	PYTHON=$(PYTHON) bench/setup.sh
	touch $(BENCH_STAMP)

bench: bench-env
	bench/.venv/bin/python bench/run.py $(BENCH_ARGS)
