# One entry point for developers and CI. `make test` is the README's test command.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps lint sync-client test test-fast test-e2e crds cluster-install cluster-up cluster-down cluster-status bench bench-drain demo demo-down bench-gateway bench-limits bench-topology bench-operator bench-keda keda-up keda-down

deps: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[operator,dev,demo]'
	touch $@

# mypy --strict over worker, operator, tests and bench (files and bases: pyproject.toml), and the
# layering contracts of pyproject.toml's [tool.importlinter] (import-linter). The
# second run is tests/unit/chart/conftest.py, a second top-level `conftest` (see pyproject.toml).
lint: deps
	$(VENV)/bin/ruff check worker operator tests bench hack/demo examples/demo
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests/unit/chart/conftest.py
	$(VENV)/bin/lint-imports
	$(PY) hack/gen-sync-client --check

# The blocking client is generated from the asyncio one (make lint fails on drift).
sync-client: deps
	$(PY) hack/gen-sync-client

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

# Standalone vs a private 3+3 Redis Cluster: jobs/s and round trips per job, 1 and 6 queues,
# one worker process per queue (issue 12). Heavy: not part of `make test`.
bench-topology: deps
	$(PY) bench/throughput.py --topology both

# One operator, 1,000 queues on the real cluster (bench/operator_scale.py; root): start-up,
# idle CPU/RSS/API requests, enqueue -> decision under bursts, restart. ~8 min.
bench-operator: deps
	$(PY) bench/operator_scale.py $(BENCH_ARGS)

# The SIGTERM drain soak on the real cluster (bench/drain_soak.py; root, `hack/cluster/up` first):
# >=100 worker pods deleted at random moments; prints SIGKILLed pods, lost/duplicate jobs,
# delete->exit p50/p95. Minutes, so not part of `make test`. BENCH_ARGS="--cycles 40" etc.
bench-drain: deps
	$(PY) bench/drain_soak.py $(BENCH_ARGS)

# The README's first command: bgq doing its job on the local cluster, measured (needs root).
# SCENARIO=drain: long jobs through a scale-down and a rolling update. DEMO_ARGS=--short: small.
# The precheck runs first and stops before anything is built if the machine lacks something.
SCENARIO ?= burst
DEMO_ARGS ?=
demo:
	@hack/demo/precheck
	@$(MAKE) --no-print-directory deps
	PYTHONPATH=hack/demo $(PY) -m bgqdemo up --scenario $(SCENARIO) $(DEMO_ARGS)

# Remove the demo (queue, release, namespace), then stop the cluster (KEEP_CLUSTER=1: keep it).
demo-down:
	@if [ -x $(PY) ]; then PYTHONPATH=hack/demo $(PY) -m bgqdemo down; fi
	@if [ -z "$(KEEP_CLUSTER)" ]; then hack/cluster/down; else echo "cluster kept (KEEP_CLUSTER set)"; fi

# Gateway HTTP stack benchmark (built-in server vs Starlette+uvicorn, ~2 min; not part of
# `make test`): enqueue req/s, p50 and p99 at 1/16/64 connections, printed side by side.
bench-gateway: deps
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(VENV)/bin/python bench/gateway_http.py
# Heavy benchmark, not part of `make test`: rate limit accuracy over 60 s with 4 worker
# processes, and the limiter's cost (bench/limits.py, ~2-3 min).
bench-limits: deps
	$(PY) bench/limits.py
# KEDA + HPA live next to bgq on the test cluster (root; not part of `make test`): builds KEDA
# once (hack/cluster/install --with keda, long), installs it for the run and removes it after.
# BENCH_KEDA_ARGS e.g. "--trace spike --trace sawtooth" (default: spike).
BENCH_KEDA_ARGS ?=
bench-keda: deps
	hack/cluster/install --no-apt --with keda
	$(PY) bench/keda_live.py $(BENCH_KEDA_ARGS)

keda-up:
	hack/cluster/keda up

keda-down:
	hack/cluster/keda down
