# headrace: `make run` runs the demo on the embedded broker, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the benchmark's Quix Streams app has a virtualenv of its own: its pins never touch ours
QUIX_VENV := .venv-quix
QUIX_STAMP := $(QUIX_VENV)/.installed

.PHONY: run test lint typecheck unit integration bench bench-quick models clean fuzz chaos

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

models/heavy.onnx: scripts/build_models.py | $(STAMP)
	$(BIN)/python scripts/build_models.py --only heavy

models: $(STAMP)
	$(BIN)/python scripts/build_models.py

run: $(STAMP)
	$(BIN)/headrace demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: models/heavy.onnx $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

test: lint typecheck models/heavy.onnx $(STAMP)
	$(BIN)/pytest -q tests

fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz --requests 100000

chaos: $(STAMP)
	$(BIN)/python -m benchmarks.chaos $(CHAOS)

$(QUIX_STAMP): benchmarks/requirements-quix.txt
	test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(QUIX_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-quix.txt
	touch $(QUIX_STAMP)

bench: $(STAMP) $(QUIX_STAMP) models/heavy.onnx
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.tracing

bench-quick: $(STAMP) $(QUIX_STAMP) models/heavy.onnx
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) $(QUIX_VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
