# One-command set-up: every target builds what it needs from scratch.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The oldest and newest Pythons we support, for `make matrix`.
MATRIX ?= 3.8 3.13

.PHONY: install test lint typecheck unit matrix demo bench-quick bench bench-full clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[sim,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check ollama_orchestra tests benchmarks
	$(BIN)/ruff format --check ollama_orchestra tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

## make test: lint, type-check, the suite on the default Python, then on the oldest and newest,
## then the benchmarks' quick mode (loose ratio checks; LiteLLM and plots only if installed).
test: lint typecheck unit matrix bench-quick

matrix:
	@set -e; for v in $(MATRIX); do ./.ci/pytest-on "$$v"; done

demo: $(STAMP)
	$(BIN)/python -m ollama_orchestra demo

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[sim,dev,bench]'
	touch $(VENV)/.bench

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks --quick

bench-full: $(VENV)/.bench
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .ruff_cache dist build
