# farm-iot-collector: everything a user or CI runs starts here.
#   make demo [DURATION=60]   the whole system on real servers, indicators shown live
#   make test                 install everything and run the whole test suite
#   make bench [BENCH_ARGS=…] ingest throughput/latency against the broker's ceiling
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DURATION ?= 0
SCENARIO ?= demo

.PHONY: test-deps demo test test-fast lint typecheck dashboards dev-certs system-deps venv clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	@scripts/ensure-system-deps.sh --for demo

test-deps:
	@scripts/ensure-system-deps.sh --for test

demo: system-deps $(STAMP)
	$(PY) -m devstack.demo --duration $(DURATION) --scenario $(SCENARIO)

test: test-deps $(STAMP) lint typecheck
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

typecheck: $(STAMP)
	$(PY) -m mypy

bench: system-deps $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

dashboards: $(STAMP)
	$(PY) -m dashboards.generate

# Development CA and broker certificates for the TLS listener, into broker/certs/.
dev-certs:
	broker/make-dev-certs.sh

clean:
	rm -rf run .pytest_cache .mypy_cache .ruff_cache
