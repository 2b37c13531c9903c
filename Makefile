# loopwire — the two commands of the quick start are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench soak install clean chromium postgresql

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,postgres]'
	touch $(STAMP)

install: $(STAMP)

## Runs loopwire's main job on its embedded default: the cart-abandonment demo.
demo: $(STAMP)
	$(BIN)/loopwire demo

## Debian's headless Chromium for the console's browser tests (Playwright drives it; it downloads no browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

## Debian's PostgreSQL server binaries, for the store's tests against PostgreSQL: tests/helpers/postgres.py
## starts a throwaway cluster in a temporary directory (run as Debian's `postgres` user when we are root:
## PostgreSQL refuses to run as root) and removes it at the end. Nothing is started here.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

## Lint, type-check and the whole suite.
test: $(STAMP) chromium postgresql
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

## Benchmarks (not part of the tests). Needs wrk: installed here with apt when missing.
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.run_all

## A 15-minute paced soak (2,000 webhooks/s): does every loopwire process's memory level off?
soak: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
