# Every target bootstraps .venv from scratch on a fresh machine and is quick once it exists.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-growth clean

# The console's browser tests drive the system's Chromium (Debian's package; Playwright
# downloads no browser here).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sagakit demo services.scenario:place_order

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src services examples tests
	$(BIN)/ruff format --check src services examples tests
	$(BIN)/mypy src services examples

# Benchmarks (not tests): e.g. make bench BENCH_ARGS="--mode open --style orchestration"
bench: $(STAMP)
	$(BIN)/sagakit bench services.scenario:bench $(BENCH_ARGS)

# Restore time, memory and throughput as history grows (docs/benchmarks.md#history-growth)
bench-growth: $(STAMP)
	$(BIN)/sagakit bench-growth services.scenario:bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
