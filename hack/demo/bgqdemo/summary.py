"""The demo's closing figures, computed from what was observed during the run.

Pure functions over :class:`Sample` (one poll of the queue and its workers) and
:class:`JobRecord` (one job's final record plus what the demo task wrote about its own runs), so
they are unit-tested without a cluster.

* **lost**: a job that was enqueued and did not end ``succeeded`` (none of the demo's tasks fail
  for good: the flaky one succeeds on its retry).
* **interrupted**: a job with a run that started and never came to its end (the task records its
  start and its end; a cancelled or killed run writes no end), or whose lease expired (a worker
  vanished while holding it).
* **enqueue→start**: from the job's enqueue time to the start of its first run, as the task saw it.
* **replica-seconds**: worker pods x seconds, integrated over the samples (what the run cost).
* **last job → zero**: from the last job's finish to the first sample without any worker pod.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Sample:
    """One poll: the queue's figures from Redis, the BackgroundQueue's status, the pods."""

    t: float  # epoch seconds
    backlog: int = 0
    in_flight: int = 0
    due: int = 0
    delayed: int = 0
    desired: int = 0
    replicas: int = 0  # the Deployment's replicas (status.replicas of the BackgroundQueue)
    pods: int = 0  # worker pods that exist (terminating ones included: they still cost)
    ready: int = 0
    draining: int = 0  # workers whose heartbeat says "draining"
    reason: str = ""
    done: int = 0  # jobs of this run in a final state
    total: int = 0  # jobs of this run


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job of the run at the end: its hash fields and the runs its task recorded."""

    id: str
    state: str  # "" when the job's hash is gone
    attempt: int = 0
    lease_expiries: int = 0
    enqueued_ms: int = 0
    finished_ms: int = 0
    starts: int = 0
    ends: int = 0
    waited_ms: int | None = None
    drained: int = 0


@dataclass(frozen=True, slots=True)
class Summary:
    """What `make demo` prints at the end (and writes with --summary-json)."""

    scenario: str
    jobs_enqueued: int
    via_client: int
    via_gateway: int
    jobs_run: int
    succeeded: int
    lost: int
    interrupted: int
    retried: int
    finished_while_draining: int
    enqueue_to_start_p50_ms: float | None
    enqueue_to_start_p95_ms: float | None
    max_replicas: int
    replica_seconds: float
    last_job_to_zero_s: float | None
    scaled_to_zero: bool
    duration_s: float
    jobs_per_second: float
    lost_ids: list[str] = field(default_factory=list)
    interrupted_ids: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def replica_seconds(samples: Sequence[Sample]) -> float:
    """Pods x seconds: each sample's pod count holds until the next sample."""
    total = 0.0
    for a, b in itertools.pairwise(samples):
        total += a.pods * max(0.0, b.t - a.t)
    return round(total, 1)


def zero_time(samples: Sequence[Sample], after: float) -> float | None:
    """Time of the first sample at or after ``after`` with no worker pod and 0 replicas, such
    that no later sample has pods again."""
    found: float | None = None
    for s in samples:
        if s.t < after:
            continue
        if s.pods == 0 and s.replicas == 0:
            if found is None:
                found = s.t
        else:
            found = None
    return found


def interrupted(job: JobRecord) -> bool:
    return job.starts > job.ends or job.lease_expiries > 0


def summarize(scenario: str, jobs: Sequence[JobRecord], samples: Sequence[Sample], *,
              via_client: int, via_gateway: int, started_at: float,
              extra: dict[str, Any] | None = None) -> Summary:
    """The figures of one run. ``started_at``: epoch seconds when the burst was sent."""
    succeeded = [j for j in jobs if j.state == "succeeded"]
    lost = [j.id for j in jobs if j.state != "succeeded"]
    broken = [j.id for j in jobs if interrupted(j)]
    waits = [float(j.waited_ms) for j in jobs if j.waited_ms is not None]
    finished = [j.finished_ms / 1000 for j in succeeded if j.finished_ms]
    last = max(finished) if finished else None
    zero = zero_time(samples, last) if last is not None else None
    end = last if last is not None else (samples[-1].t if samples else started_at)
    duration = max(0.0, end - started_at)
    return Summary(
        scenario=scenario,
        jobs_enqueued=len(jobs),
        via_client=via_client,
        via_gateway=via_gateway,
        jobs_run=sum(1 for j in jobs if j.starts > 0),
        succeeded=len(succeeded),
        lost=len(lost),
        interrupted=len(broken),
        retried=sum(1 for j in jobs if j.attempt > 1),
        finished_while_draining=sum(1 for j in jobs if j.drained > 0),
        enqueue_to_start_p50_ms=percentile(waits, 50),
        enqueue_to_start_p95_ms=percentile(waits, 95),
        max_replicas=max((s.pods for s in samples), default=0),
        replica_seconds=replica_seconds(samples),
        last_job_to_zero_s=round(zero - last, 1) if zero is not None and last is not None else None,
        scaled_to_zero=zero is not None,
        duration_s=round(duration, 1),
        jobs_per_second=round(len(succeeded) / duration, 1) if duration > 0 else 0.0,
        lost_ids=lost[:20],
        interrupted_ids=broken[:20],
        extra=dict(extra or {}),
    )
