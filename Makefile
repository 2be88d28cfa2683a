# closedloop — the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export CLOSEDLOOP_HOME ?= $(CURDIR)/.closedloop
CHROMIUM ?= /usr/bin/chromium

.PHONY: demo demo-flights up test audit lint env clean distclean bench browser java

# The environment: exactly the versions in requirements.lock, with compiled bytecode
# (the stack's imports are 2-3x slower without .pyc files).
$(BIN)/.closedloop-installed: requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "closedloop needs Python 3.11, got " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -q -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -q --no-deps -e .
	@# setuptools leaves closedloop.egg-info in plugins/, which the editable install puts on
	@# sys.path: a second copy of the metadata, so Airflow would load the closedloop plugin's
	@# entry point twice ("already registered"). The installed dist-info is the real one.
	rm -rf plugins/closedloop.egg-info
	touch $@

env: $(BIN)/.closedloop-installed

demo: env
	$(BIN)/closedloop demo --usecase hotel_bookings

# The second shipped use case: real flights out of New York in 2013, replayed day by day.
demo-flights: env
	$(BIN)/closedloop demo --usecase flight_delays

# The Airflow, MLflow and Evidently UIs on the state the demo left (Ctrl-C stops them).
up: env
	$(BIN)/closedloop up --usecase hotel_bookings

test: env browser java
	$(BIN)/ruff check plugins dags feature_repo tests benchmarks
	$(BIN)/python -m pytest tests --durations=15

# The browser of tests/browser: Debian's chromium, driven by Playwright (pip; its driver is
# in the wheel, `playwright install` downloads nothing here). Installed when missing and we
# are root (or may sudo); otherwise a clear failure. CHROMIUM names another executable.
export CLOSEDLOOP_CHROMIUM := $(CHROMIUM)
browser:
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if [ "$(CHROMIUM)" != /usr/bin/chromium ]; then \
	  echo "make browser: CHROMIUM=$(CHROMIUM) is not an executable" >&2; exit 1; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else \
	  echo "make browser: /usr/bin/chromium is missing and installing it needs root:" \
	    "run 'apt-get install -y chromium' as root (or set CHROMIUM=/path/to/chromium)" >&2; \
	  exit 1; fi; \
	command -v apt-get >/dev/null || { echo "make browser: no apt-get to install chromium;" \
	  "set CHROMIUM=/path/to/chromium" >&2; exit 1; }; \
	$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; \
	test -x /usr/bin/chromium || { echo "make browser: apt-get installed no /usr/bin/chromium" >&2; exit 1; }

# The Java that the spark compute setting's tests run Spark on (pyspark's local mode):
# 17 or 21 on PATH or at JAVA_HOME, else Debian's openjdk-17-jre-headless is installed
# when we are root (or may sudo); otherwise a clear failure.
java:
	@java="$${JAVA_HOME:+$$JAVA_HOME/bin/}java"; \
	if command -v "$$java" >/dev/null && "$$java" -version 2>&1 | grep -Eq 'version "(17|21)[."]'; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else \
	  echo "make java: Spark needs Java 17 or 21 and installing it needs root:" \
	    "run 'apt-get install -y openjdk-17-jre-headless' as root (or set JAVA_HOME)" >&2; \
	  exit 1; fi; \
	command -v apt-get >/dev/null || { echo "make java: no apt-get to install Java 17;" \
	  "set JAVA_HOME to a JDK 17 or 21" >&2; exit 1; }; \
	$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q openjdk-17-jre-headless; \
	java -version

# Known vulnerabilities of the pinned dependencies (PyPI's advisory data). A finding fails:
# bump the pin, or ignore it with --ignore-vuln ID and the reason in docs/production.md.
# --strict: a package PyPI cannot answer for fails too, instead of a vacuous pass.
audit: env
	$(BIN)/pip-audit -r requirements.lock --no-deps --disable-pip --strict --progress-spinner off

lint: env
	$(BIN)/ruff check plugins dags feature_repo tests benchmarks
	$(BIN)/ruff format --check plugins dags feature_repo tests benchmarks

bench: env
	$(BIN)/python benchmarks/validation.py
	$(BIN)/python benchmarks/drift.py
	$(BIN)/python benchmarks/aggregates.py
	$(BIN)/python benchmarks/batch_inference.py

clean:
	rm -rf .closedloop

distclean: clean
	rm -rf $(VENV)
