# The two quick-start commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup bench clean-venv java

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## Build the demo workspace on the embedded defaults and run the main job.
demo: $(STAMP)
	$(BIN)/shopsight demo

## Spark (`shopsight score --engine spark`, its tests) needs a Java runtime: Debian's headless JRE where none is on PATH.
java:
	@command -v java >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless)

## Run the whole test suite (the slow, real-model tests included).
test: $(STAMP) java
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean-venv:
	rm -rf $(VENV)
