# One entry point for developers and CI. `make test` is the README's test command.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps lint test test-fast test-e2e crds cluster-install cluster-up cluster-down cluster-status bench

deps: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[operator,dev]'
	touch $@

# mypy --strict over worker, operator, tests and bench (files and bases: pyproject.toml). The
# second run is tests/unit/chart/conftest.py, a second top-level `conftest` (see pyproject.toml).
lint: deps
	$(VENV)/bin/ruff check worker operator tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests/unit/chart/conftest.py

# The CRD is generated from the pydantic spec; the chart ships a copy (tests fail on drift).
crds: deps
	$(PY) -m bgq_operator.crdgen --write
	cp crds/backgroundqueues.bgq.dev.yaml charts/bgq/files/crds/backgroundqueues.bgq.dev.yaml

# Everything: lint, unit, integration (real redis-server), e2e (real Kubernetes cluster).
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Quick local loop: no e2e, no cluster.
test-fast: lint
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

test-e2e: deps
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

# The real test cluster (docs/cluster.md); needs root. The e2e fixtures call these themselves.
cluster-install:
	hack/cluster/install

cluster-up:
	hack/cluster/up

cluster-down:
	hack/cluster/down

cluster-status:
	hack/cluster/status
