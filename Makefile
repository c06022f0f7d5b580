# The everyday commands; CI (.ci/run) calls `make lint` and `make test` too.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# LeRobot (>= 0.5) needs Python 3.12: pyenv's, else python3.12 on PATH (a pyenv shim for
# another version fails, hence pyenv first); PYTHON312=/path/to/python3.12 overrides.
PYTHON312 ?= $(or $(shell pyenv prefix 3.12 2>/dev/null | sed 's|$$|/bin/python3.12|'),$(shell command -v python3.12 2>/dev/null))
# The LeRobot environment holds the dependencies only (about 5 GB, torch included); the
# farm's code comes from this checkout. It lives outside the checkout, named after the
# dependencies it was built from, so every clone on this machine (CI's too) reuses it.
LEROBOT_ENV_KEY := $(shell $(PYTHON) -c "import tomllib, hashlib, json; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(hashlib.sha256(json.dumps([p['dependencies'], p['optional-dependencies']], sort_keys=True).encode()).hexdigest()[:12])")
LEROBOT_VENV ?= $(HOME)/.cache/robot-encoding-farm/lerobot-env-$(LEROBOT_ENV_KEY)
LEROBOT_RUN := PYTHONPATH=$(CURDIR) $(LEROBOT_VENV)/bin/python

# pytest's 5 (no tests collected) fails too, said: a marker or a path went wrong.
pytest = $(1) -m pytest $(2); status=$$?; if [ $$status -eq 5 ]; then echo "pytest collected no tests ($(2))" >&2; fi; exit $$status

.PHONY: demo test test-main test-fast test-lerobot lerobot-conformance lerobot-env lerobot-demo lerobot-benchmark lint tables clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[recorder,test]'
	touch $@

# The zero-config default: a private Redis and 2 local workers, 2 cameras, 2 episodes.
demo: $(BIN)/.installed
	$(BIN)/recorder record --async-encoding

# The whole suite: the farm's tests here, then LeRobot's (real LeRobot, Python 3.12).
test: test-main test-lerobot

test-main: $(BIN)/.installed
	@$(call pytest,$(BIN)/python,-m "not lerobot")

test-fast: $(BIN)/.installed
	@$(call pytest,$(BIN)/python,-m "not integration and not lerobot")

# Built with the pip that Python 3.12 ships (the resolution users get), then checked.
$(LEROBOT_VENV)/.installed:
	@test -n "$(PYTHON312)" || { echo "LeRobot needs Python 3.12: install it (pyenv install 3.12), or run make with PYTHON312=/path/to/python3.12" >&2; exit 2; }
	rm -rf $(LEROBOT_VENV)
	$(PYTHON312) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/pip install -q '.[recorder,test,lerobot]'
	$(LEROBOT_VENV)/bin/pip uninstall -q -y robot-encoding-farm
	$(LEROBOT_VENV)/bin/pip check
	touch $@
	@# Environments of older dependency sets (5 GB each) go once this one is ready.
	find $(dir $(LEROBOT_VENV)) -maxdepth 1 -name 'lerobot-env-*' ! -name $(notdir $(LEROBOT_VENV)) -exec rm -rf {} +

lerobot-env: $(LEROBOT_VENV)/.installed

# LeRobot 0.6 loads what the farm records, and `recorder lerobot-record` runs LeRobot's
# own record loop on the farm. FARM_DEV_PACKAGES: the versions the farm's tests ran on.
test-lerobot: $(LEROBOT_VENV)/.installed $(BIN)/.installed
	@export FARM_DEV_PACKAGES="$$($(BIN)/python -c 'from importlib.metadata import version as v; print(" ".join(f"{p}=={v(p)}" for p in ("celery", "kombu")))')"; \
		$(call pytest,$(LEROBOT_RUN),-m lerobot)

lerobot-conformance: test-lerobot  # its name before the LeRobot suite grew

# recorder benchmark in the LeRobot environment, for its LeRobot comparisons, e.g.
#   make lerobot-benchmark ARGS="lerobot --cameras 4 --episodes 2 --episode-time 10"
lerobot-benchmark: $(LEROBOT_VENV)/.installed
	$(LEROBOT_RUN) -m recorder.cli benchmark $(ARGS)

# lerobot-record's own loop with a synthetic robot and 2 cameras, on the zero-config farm.
lerobot-demo: $(LEROBOT_VENV)/.installed
	$(LEROBOT_RUN) -m recorder.cli lerobot-record --robot.type=farm_synthetic \
		--teleop.type=farm_synthetic --dataset.repo_id=local/lerobot_demo \
		--dataset.root=recordings/local/lerobot_demo --dataset.single_task="move the arm" \
		--dataset.num_episodes=2 --dataset.episode_time_s=10 --dataset.reset_time_s=2 \
		--dataset.push_to_hub=false --play_sounds=false

lint: $(BIN)/.installed
	$(BIN)/ruff check recorder encoder_worker tests benchmarks
	$(BIN)/mypy
	$(BIN)/mypy benchmarks  # the scripts, beside each other (not a package)

# benchmarks/README.md's tables, made again from the results files in benchmarks/results/.
tables: $(BIN)/.installed
	$(BIN)/python benchmarks/tables.py

clean:
	rm -rf $(VENV) recordings benchmark_results .pytest_cache .mypy_cache .ruff_cache
