# Sentio: two commands from a fresh clone.
#   make demo   create .venv, install, generate the default data and run the nightly flow
#   make test   create .venv if needed, install, run the whole test suite
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/demo

.PHONY: install demo test lint bench bench-learning clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sentio synth --out $(DEMO_DIR)/bars.feather
	$(BIN)/sentio run --data $(DEMO_DIR)/bars.feather

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_synth.py
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_regimes.py
	$(BIN)/python benchmarks/bench_cv.py
	$(BIN)/python benchmarks/bench_bootstrap.py
	$(BIN)/python benchmarks/bench_env.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_parallel.py

bench-learning: $(STAMP)
	$(BIN)/python benchmarks/bench_learning.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
