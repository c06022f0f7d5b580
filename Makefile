# The everyday commands; CI (.ci/run) calls `make test` too.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

PYTHON312 ?= python3.12
LEROBOT_VENV ?= .venv-lerobot

.PHONY: demo test test-fast lint benchmark tables clean lerobot-conformance

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[recorder,test]'
	touch $@

# The zero-config default: a private Redis and 2 local workers, 2 cameras, 2 episodes.
demo: $(BIN)/.installed
	$(BIN)/recorder record --async-encoding

test: $(BIN)/.installed
	$(BIN)/python -m pytest

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not integration"

# Real LeRobot 0.6.1 (Python 3.12, about 5 GB with torch) loads what the farm records.
$(LEROBOT_VENV)/.installed: pyproject.toml
	$(PYTHON312) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/pip install -q --upgrade pip
	$(LEROBOT_VENV)/bin/pip install -q 'lerobot[dataset]==0.6.1' -e '.[recorder,test]'
	touch $@

lerobot-conformance: $(LEROBOT_VENV)/.installed
	$(LEROBOT_VENV)/bin/python -m pytest -m lerobot tests/test_lerobot_conformance.py

lint: $(BIN)/.installed
	$(BIN)/ruff check recorder encoder_worker tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/mypy benchmarks  # the scripts, beside each other (not a package)

# benchmarks/README.md's tables, made again from the results files in benchmarks/results/.
tables: $(BIN)/.installed
	$(BIN)/python benchmarks/tables.py

clean:
	rm -rf $(VENV) $(LEROBOT_VENV) recordings benchmark_results .pytest_cache .mypy_cache .ruff_cache
