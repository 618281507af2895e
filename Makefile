# transevolve: set up a local virtual environment, run the tests, run the main job.
# `make compare` and `make test` are the README's two commands; both set up .venv first (compare also fetches its data).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup data compare test lint check clean

setup: $(STAMP) data

# torch first, pinned: pip then takes the local CPU wheel instead of a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job's dataset (scikit-learn's 8x8 digits, read from its pip wheel; cached, checksummed, idempotent).
data: $(STAMP)
	$(BIN)/transevolve data fetch digits

compare: setup
	$(BIN)/transevolve compare

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check .

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
