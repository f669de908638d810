# The two quick-start commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup postgres java bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) postgres

## PostgreSQL's server binaries for the database-source tests (Debian's `postgresql` package), where
## initdb is absent. Without apt (or root) it says so and goes on: those tests then skip, naming why.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null) \
	  || echo "make postgres: apt-get could not install postgresql; the database-source tests will be skipped"; \
	else echo "make postgres: no initdb and no apt-get as root; install PostgreSQL (or set PG_BIN) to run the database-source tests"; fi

## Build the demo workspace on the embedded defaults and run the main job.
demo: $(STAMP)
	$(BIN)/shopsight demo

## Spark (`shopsight score --engine spark`, its tests) needs a Java runtime: Debian's headless JRE where none is on PATH.
java:
	@command -v java >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless)

## Run the whole test suite (the slow, real-model tests included).
test: $(STAMP) postgres java
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean-venv:
	rm -rf $(VENV)
