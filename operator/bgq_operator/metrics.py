"""The operator's Prometheus metrics (served on ``/metrics`` next to ``/healthz``)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bgq_operator.spec import BackgroundQueueSpec, QueueStatus

REGISTRY = CollectorRegistry(auto_describe=True)
_Q = ("namespace", "queue")

DECISION_LATENCY = Histogram(
    "bgq_operator_decision_seconds",
    "Time from a wake-up (or poll) to the applied scaling decision of one queue.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
DEMAND = Gauge(
    "bgq_operator_queue_demand", "backlog + in flight + due, last read.", _Q, registry=REGISTRY
)
BACKLOG = Gauge("bgq_operator_queue_backlog", "Jobs never delivered.", _Q, registry=REGISTRY)
IN_FLIGHT = Gauge("bgq_operator_queue_in_flight", "Jobs delivered.", _Q, registry=REGISTRY)
DESIRED = Gauge(
    "bgq_operator_desired_replicas", "Replicas the autoscaler wants.", _Q, registry=REGISTRY
)
REPLICAS = Gauge(
    "bgq_operator_replicas", "Replicas of the worker Deployment.", _Q, registry=REGISTRY
)
DUE = Gauge("bgq_operator_queue_due", "Delayed jobs already due.", _Q, registry=REGISTRY)
DEAD = Gauge("bgq_operator_queue_dead", "Dead letters kept.", _Q, registry=REGISTRY)
OLDEST_READY_AGE = Gauge(
    "bgq_operator_queue_oldest_ready_age_seconds",
    "Age of the oldest job waiting for a worker (0 when nothing waits), last read.",
    _Q,
    registry=REGISTRY,
)
REDIS_REACHABLE = Gauge(
    "bgq_operator_redis_reachable",
    "1 when the last demand read of the queue's Redis succeeded, else 0.",
    _Q,
    registry=REGISTRY,
)
MIN_REPLICAS = Gauge(
    "bgq_operator_min_replicas", "spec.scaling.minReplicas (the floor).", _Q, registry=REGISTRY
)
MAX_REPLICAS = Gauge(
    "bgq_operator_max_replicas", "spec.scaling.maxReplicas (the ceiling).", _Q, registry=REGISTRY
)
SLO_MAX_WAIT = Gauge(
    "bgq_operator_queue_slo_max_wait_seconds",
    "spec.slo.maxWaitSeconds (only for queues that set it).",
    _Q,
    registry=REGISTRY,
)
SCALE_EVENTS = Counter(
    "bgq_operator_scale_events_total",
    "Replica changes made, by direction.",
    (*_Q, "direction"),
    registry=REGISTRY,
)
INTERRUPTED_JOBS = Counter(
    "bgq_operator_interrupted_jobs_total",
    "Jobs in flight on pods a scale-down made the ReplicaSet remove (stays 0: deletion cost "
    "and the busy-pod floor keep busy pods while idle ones exist).",
    _Q,
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "bgq_operator_redis_errors_total", "Failed demand reads, by endpoint.", ("endpoint",),
    registry=REGISTRY,
)  # fmt: skip
WAKEUPS = Counter(
    "bgq_operator_wakeups_total", "bgq:wake messages received.", ("endpoint",), registry=REGISTRY
)
RECONCILES = Counter(
    "bgq_operator_reconciles_total", "Reconciles, by outcome.", ("outcome",), registry=REGISTRY
)
API_REQUESTS = Counter(
    "bgq_operator_api_requests_total",
    "Kubernetes API requests the operator made itself (not kopf's watches), by HTTP method.",
    ("method",),
    registry=REGISTRY,
)


_PER_QUEUE = (
    DUE, DEAD, OLDEST_READY_AGE, REDIS_REACHABLE, MIN_REPLICAS, MAX_REPLICAS, SLO_MAX_WAIT
)  # fmt: skip


def forget_queue(namespace: str, queue: str) -> None:
    """Drop a deleted queue's series."""
    for metric in (DEMAND, BACKLOG, IN_FLIGHT, DESIRED, REPLICAS, INTERRUPTED_JOBS, *_PER_QUEUE):
        with contextlib.suppress(KeyError):
            metric.remove(namespace, queue)


def record_queue_figures(labels: tuple[str, str], figures: QueueStatus | None) -> None:
    """Set the per-queue gauges from ``status.queue`` figures (autoscaler.queue_figures)."""
    if figures is None:
        return
    DUE.labels(*labels).set(float(figures.due or 0))
    DEAD.labels(*labels).set(float(figures.dead or 0))
    OLDEST_READY_AGE.labels(*labels).set(float(figures.oldest_job_age_seconds or 0))


def record_limits(labels: tuple[str, str], spec: BackgroundQueueSpec) -> None:
    """Export the spec's replica bounds and SLO, so alerts can compare against them.

    Also creates the queue's interrupted-jobs series at 0, so ``increase()`` sees its first
    rise (a counter series born at 1 would read as no increase).
    """
    INTERRUPTED_JOBS.labels(*labels)
    MIN_REPLICAS.labels(*labels).set(spec.scaling.min_replicas)
    MAX_REPLICAS.labels(*labels).set(spec.scaling.max_replicas)
    wait = spec.slo.max_wait_seconds if spec.slo is not None else None
    if wait is None:
        with contextlib.suppress(KeyError):
            SLO_MAX_WAIT.remove(*labels)
    else:
        SLO_MAX_WAIT.labels(*labels).set(wait)
