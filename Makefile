# transevolve: set up a local virtual environment, run the tests, run the main job.
# `make compare` and `make test` are the README's two commands; `make setup` is implied by both.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup compare test lint check clean

setup: $(STAMP)

# torch first, pinned: pip then takes the local CPU wheel instead of a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

compare: setup
	$(BIN)/transevolve compare

test: setup
	$(BIN)/python -m pytest -q -n 2

lint: setup
	$(BIN)/ruff check .

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
