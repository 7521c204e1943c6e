# The two quickstart commands (README): `make demo` runs the system, `make test` the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install lint clean

$(BIN)/fleetline: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/fleetline

# Runs the demo steps and stops everything again (exit 0 = every step passed); keep the stack
# running with `$(BIN)/fleetline up` or `$(BIN)/fleetline demo` (see docs/local.md).
demo: install
	$(BIN)/fleetline demo --exit

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check shared services tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .fleetline tests/artifacts
