# One-command set-up: every target builds what it needs from scratch.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The oldest and newest Pythons we support, for `make matrix`.
MATRIX ?= 3.8 3.13

# The shared-slots tests start a real redis-server (Debian's package) on loopback.
.PHONY: redis install test lint typecheck unit matrix wheel-check demo bench-quick bench bench-full clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[sim,proxy,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check ollama_orchestra tests benchmarks
	$(BIN)/ruff format --check ollama_orchestra tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

## make redis: the redis-server binary the shared-slots tests start (Debian's package).
redis:
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)

## make unit: the suite under coverage (branches, subprocesses included: the CLI and the
## simulator's subprocess mode), failing under the `fail_under` of pyproject.toml.
unit: $(STAMP) redis
	rm -f .coverage .coverage.*
	COVERAGE_FILE=$(CURDIR)/.coverage $(BIN)/coverage run -m pytest
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

## make wheel-check: build the wheel, install it without extras into a throwaway virtualenv,
## and check the import, the CLI and pytest in an unrelated project there.
wheel-check: $(STAMP)
	./.ci/check-wheel $(BIN)/python

## make test: lint, type-check, the suite on the default Python (with coverage), then on the
## oldest and newest, the plain wheel in a clean virtualenv, then the benchmarks' quick mode
## (loose ratio checks; LiteLLM and plots only if installed).
test: lint typecheck unit matrix wheel-check bench-quick

matrix: redis
	@set -e; for v in $(MATRIX); do ./.ci/pytest-on "$$v"; done

demo: $(STAMP)
	$(BIN)/python -m ollama_orchestra demo

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[sim,proxy,dev,bench]'
	touch $(VENV)/.bench

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks --quick

bench-full: $(VENV)/.bench
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .ruff_cache dist build .coverage .coverage.*
