"""The operator's Prometheus metrics (served on ``/metrics`` next to ``/healthz``)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
_Q = ("namespace", "queue")

DECISION_LATENCY = Histogram(
    "bgq_operator_decision_seconds",
    "Time from a wake-up (or poll) to the applied scaling decision of one endpoint's queues.",
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


def forget_queue(namespace: str, queue: str) -> None:
    """Drop a deleted queue's series."""
    for metric in (DEMAND, BACKLOG, IN_FLIGHT, DESIRED, REPLICAS, INTERRUPTED_JOBS):
        with contextlib.suppress(KeyError):
            metric.remove(namespace, queue)
