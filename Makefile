# The everyday commands; CI (.ci/run) calls `make test` too.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint benchmark clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The zero-config default: a private Redis and 2 local workers, 2 cameras, 2 episodes.
demo: $(BIN)/.installed
	$(BIN)/recorder record --async-encoding

test: $(BIN)/.installed
	$(BIN)/python -m pytest

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not integration"

lint: $(BIN)/.installed
	$(BIN)/ruff check recorder encoder_worker tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) recordings benchmark_results .pytest_cache .mypy_cache .ruff_cache
