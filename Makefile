# The two quick-start commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup postgres java bench clean-venv

## llama.cpp is built for any x86-64 with AVX2, not for the building host's CPU (-march=native): on hosts with
## AMX (Sapphire Rapids) the native build's AMX kernels crash at the first decode of SmolLM2 (SIGSEGV in
## ggml_backend_amx_mul_mat, 2026-12-07), and a wheel pip cached from a native build may meet another CPU.
## So it is built once per venv without pip's cache (LLAMA_CMAKE_ARGS overrides the flags).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_STAMP := $(VENV)/.llama-portable

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	test -f $(LLAMA_STAMP) || (CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir --force-reinstall \
	  --no-deps "$$(grep -o 'llama-cpp-python[^"]*' pyproject.toml | head -1)" && touch $(LLAMA_STAMP))
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
