"""Prometheus metrics of one worker process (its own registry, served on ``/metrics``).

The per-job hot path must stay cheap (a worker targets >10k jobs/s), so job counters and the
two latency histograms are plain integers and bucket arrays updated without locks on the event
loop thread and turned into Prometheus families only when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)

COUNTERS: dict[str, str] = {
    "started": "Jobs started",
    "succeeded": "Jobs that succeeded",
    "failed": "Failed attempts (raised, timed out or bad payload)",
    "retried": "Failed attempts scheduled for a retry",
    "dead": "Jobs this worker sent to the dead letters",
    "reclaimed": "Jobs this worker took over after another worker's lease expired",
    "poison_pills": "Jobs this worker's fetches dead-lettered as poison pills (lease expired "
    "max-deliveries times)",
    "cancelled": "Jobs cancelled on request",
    "stale_acks": "Completions rejected because the job had been reclaimed elsewhere",
    "lease_renewals": "Leases renewed",
    "leases_lost": "Jobs found reclaimed elsewhere at renewal (local run abandoned)",
    "redis_errors": "Redis calls that failed and were retried",
}
DRAIN_OUTCOMES = ("completed", "released_unstarted", "released_deadline")


class FastHistogram:
    """Cumulative-bucket histogram without locks (event-loop thread only)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Record one value."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((str(float(bound)), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class Metrics(Collector):
    """All ``bgq_*`` metrics of a worker, label ``queue``. Increment the public int fields."""

    def __init__(self, queue: str, registry: CollectorRegistry | None = None) -> None:
        self.queue = queue
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.drain: dict[str, int] = dict.fromkeys(DRAIN_OUTCOMES, 0)
        self.queue_wait = FastHistogram(LATENCY_BUCKETS)
        self.run_time = FastHistogram(LATENCY_BUCKETS)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.registry = registry or CollectorRegistry()
        self.registry.register(self)

    def gauge(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        """Expose ``bgq_<name>`` computed by ``fn`` at scrape time."""
        self.gauges[name] = (doc, fn)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        q = [self.queue]
        for name, doc in COUNTERS.items():
            metric = "bgq_" + (
                name if name.startswith(("lease", "stale", "redis")) else f"jobs_{name}"
            )
            fam = CounterMetricFamily(metric, doc, labels=["queue"])
            fam.add_metric(q, self.counts[name])
            yield fam
        drain = CounterMetricFamily(
            "bgq_drain_jobs",
            "Jobs at shutdown by outcome: completed (finished during the drain), "
            "released_unstarted (handed back at once), released_deadline (handed back at the "
            "deadline without consuming a retry)",
            labels=["queue", "outcome"],
        )
        for outcome, n in self.drain.items():
            drain.add_metric([self.queue, outcome], n)
        yield drain
        for metric, doc, h in (
            ("bgq_job_queue_wait_seconds", "Enqueue (or hand-back) to start", self.queue_wait),
            ("bgq_job_run_seconds", "Run time of an attempt", self.run_time),
        ):
            fam_h = HistogramMetricFamily(metric, doc, labels=["queue"])
            fam_h.add_metric(q, h.buckets(), h.total)
            yield fam_h
        for name, (doc, fn) in self.gauges.items():
            fam_g = GaugeMetricFamily(f"bgq_{name}", doc, labels=["queue"])
            fam_g.add_metric(q, fn())
            yield fam_g

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


__all__ = ["COUNTERS", "DRAIN_OUTCOMES", "FastHistogram", "Metrics"]
