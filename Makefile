# fedsim: `make run` runs the default federation, `make test` runs the tests.
# Both create .venv on first use (pip install -e ".[dev]").
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
ARGS   ?=

.PHONY: run test test-all lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)  ## the main job; pass overrides with ARGS="rounds=50 model=cnn"
	$(BIN)/fedsim run $(ARGS)

test: $(STAMP)  ## the default test run (excludes `slow` and `gpu` tests)
	$(BIN)/python -m pytest

test-all: $(STAMP)  ## every test but the GPU ones
	$(BIN)/python -m pytest -m "not gpu"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy fedsim clients server strategies

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
