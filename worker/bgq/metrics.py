"""Prometheus metrics of one worker process (its own registry, served on ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)


class Metrics:
    """Counters, histograms and gauges named ``bgq_*``; label ``queue`` everywhere."""

    def __init__(self, queue: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = ["queue"]

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=r)

        self.started = counter("bgq_jobs_started_total", "Jobs started").labels(queue)
        self.succeeded = counter("bgq_jobs_succeeded_total", "Jobs that succeeded").labels(queue)
        self.failed = counter("bgq_jobs_failed_total", "Failed attempts (raised or timed out)")
        self.failed_q = self.failed.labels(queue)
        self.retried = counter("bgq_jobs_retried_total", "Failed attempts scheduled for retry")
        self.retried_q = self.retried.labels(queue)
        self.dead = counter("bgq_jobs_dead_total", "Jobs sent to the dead letters by this worker")
        self.dead_q = self.dead.labels(queue)
        self.reclaimed = counter(
            "bgq_jobs_reclaimed_total", "Jobs this worker took over after another's lease expired"
        ).labels(queue)
        self.cancelled = counter("bgq_jobs_cancelled_total", "Jobs cancelled on request").labels(
            queue
        )
        self.stale_acks = counter(
            "bgq_stale_acks_total", "Completions rejected because the job was reclaimed"
        ).labels(queue)
        self.renewals = counter("bgq_lease_renewals_total", "Leases renewed").labels(queue)
        self.leases_lost = counter(
            "bgq_leases_lost_total", "Jobs found reclaimed elsewhere at renewal"
        ).labels(queue)
        self.drain = Counter(
            "bgq_drain_jobs_total",
            "Jobs at shutdown by outcome: completed (finished during the drain), "
            "released_unstarted (handed back at once), released_deadline (handed back at the "
            "deadline without consuming a retry)",
            ["queue", "outcome"],
            registry=r,
        )
        self.drain_completed = self.drain.labels(queue, "completed")
        self.drain_released_unstarted = self.drain.labels(queue, "released_unstarted")
        self.drain_released_deadline = self.drain.labels(queue, "released_deadline")
        self.queue_wait = Histogram(
            "bgq_job_queue_wait_seconds",
            "Enqueue (or last hand-back) to start",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(queue)
        self.run_time = Histogram(
            "bgq_job_run_seconds",
            "Run time of an attempt",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(queue)
        self.in_flight = Gauge(
            "bgq_jobs_in_flight", "Jobs fetched and not yet settled", labels, registry=r
        ).labels(queue)
        self.running = Gauge("bgq_jobs_running", "Jobs running now", labels, registry=r).labels(
            queue
        )
        self.redis_errors = counter(
            "bgq_redis_errors_total", "Redis calls that failed (retried)"
        ).labels(queue)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


__all__ = ["Metrics"]
