"""Write each queue's control keys (pause, limits) from its spec; read back what scaling needs.

The fetch script enforces pause and limits from Redis keys (:mod:`bgq.control`), so a worker
in any language sees the same rules. Every autoscaler tick this module, in one pipelined
round trip for all queues of an endpoint:

* sets or clears the ``spec`` field of ``P:paused`` from ``spec.paused`` (``bgq pause`` owns
  the ``cli`` field; the queue is paused while either exists) and reads whether it exists;
* writes ``P:limits`` from ``spec.limits`` (or deletes it);
* reads the completion counters of ``P:stats`` and how many entries are parked, so the
  autoscaler can estimate the run time by Little's law (run time = busy jobs / completions
  per second) for the rate-limit cap;
* for queues with per-key limits, runs ``bgq/lua/parked.lua`` (read-only): how many parked
  jobs wait behind the keys and how many of them the keys' free concurrency slots let start
  now, for the concurrency cap (:func:`startable`);
* reads ``P:wake:trace``, the ``traceparent`` of the enqueue that published the last wake-up
  (docs/protocol.md, section 3), so the decision span can link to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bgq.connection import AsyncRedis
from bgq.control import limits_document, limits_key, paused_key
from bgq.protocol import QueueName
from bgq.scripts import SCRIPTS
from bgq_operator.spec import BackgroundQueueSpec

RATE_WINDOW_S = 10.0
"""Completions are counted over at least this long before a run time is estimated."""
PARK_CONSUMER = "~parked"
MAX_PARK_LISTS = 200
"""Park lists (distinct key values with waiting jobs) parked.lua looks at; more: no cap.
About 3 ms of Redis time for 200 lists with 2 running jobs each (a loaded 2-core machine)."""
MAX_RUN_MEMBERS = 1000
"""Members of one concurrency run set parked.lua checks."""


def limits_of(spec: BackgroundQueueSpec) -> str | None:
    """The ``P:limits`` JSON of a spec (None: no limits)."""
    limits = spec.limits
    if limits is None or (limits.rate is None and not limits.keys):
        return None
    rate = (limits.rate.jobs, limits.rate.per_seconds) if limits.rate else None
    keys = [
        {
            "name": k.name,
            "key_from": k.key_from,
            "concurrency": k.concurrency,
            "rate": (k.rate.jobs, k.rate.per_seconds) if k.rate else None,
        }
        for k in limits.keys or ()
    ]
    return limits_document(rate, keys)


@dataclass
class RunTimeEstimate:
    """Completions and busy jobs seen over time, for Little's law (kept per queue between ticks).

    Run time = mean busy jobs / completions per second over the same window (the last
    ``6 x RATE_WINDOW_S`` seconds, at least ``RATE_WINDOW_S``). The mean, not the busy count of
    the latest tick: a queue that just went idle keeps the run time its jobs had (an idle tick
    says nothing about how long jobs run), and a window without busy jobs gives no estimate.
    """

    samples: list[tuple[float, int, int]] = field(default_factory=list)
    """``(time, completed counter, busy jobs)`` per tick."""

    def add(self, now: float, completed: int, busy: int) -> float | None:
        """Record a tick; return the run time estimate (seconds) or None if unknown yet."""
        self.samples = [s for s in self.samples if now - s[0] <= 6 * RATE_WINDOW_S]
        if self.samples and completed < self.samples[-1][1]:
            self.samples = []  # counters reset (Redis flushed)
        self.samples.append((now, completed, max(0, busy)))
        t0, c0, _ = self.samples[0]
        if now - t0 < RATE_WINDOW_S or completed <= c0:
            return None
        mean_busy = sum(b for _, _, b in self.samples) / len(self.samples)
        if mean_busy <= 0:
            return None
        throughput = (completed - c0) / (now - t0)
        return mean_busy / throughput


@dataclass(frozen=True, slots=True)
class ParkedSummary:
    """What ``parked.lua`` read: jobs parked behind the per-key limits and what may start."""

    lists: int
    """Park lists (distinct key values) with waiting jobs."""
    jobs: int
    """Jobs waiting in them."""
    free: int
    """Of those behind concurrency limits only: how many the keys' free slots let start now."""
    unbounded: int
    """Jobs waiting in lists without a concurrency bound (rate-only keys, pause list)."""
    truncated: bool
    """Partial: more lists than :data:`MAX_PARK_LISTS`, or the count stopped once more jobs
    could start than maxReplicas can run (no cap possible either way)."""

    @classmethod
    def from_reply(cls, reply: Any) -> ParkedSummary | None:
        """Parse the script's reply; None for an error or a malformed reply."""
        if not isinstance(reply, list) or len(reply) < 5:
            return None
        try:
            lists, jobs, free, unbounded, truncated = (int(v) for v in reply[:5])
        except (TypeError, ValueError):
            return None
        return cls(lists, jobs, free, unbounded, bool(truncated))


def startable(summary: ParkedSummary | None, unread: int, due: int) -> int | None:
    """Parked jobs that may start now, when every waiting job is parked behind the key limits.

    None (no concurrency cap) when there is no summary, it is partial, or some waiting work is
    outside the park lists: unread stream entries (``unread``: their keys are not known until a
    worker reads them) or delayed jobs already due (promoted on the next fetch).
    """
    if summary is None or summary.truncated or unread > 0 or due > 0:
        return None
    return summary.free + summary.unbounded


@dataclass(frozen=True, slots=True)
class Control:
    """What one tick read back for a queue."""

    paused: bool
    completed: int
    parked: int
    summary: ParkedSummary | None = None
    """Parked jobs behind per-key limits (queues with ``spec.limits.keys`` only)."""
    wake_trace: str | None = None
    """The ``traceparent`` of the enqueue that published the last wake-up, if any."""


def wake_trace_key(queue: QueueName) -> str:
    """``P:wake:trace``: the traceparent of the enqueue that published the last wake-up."""
    return f"{queue.keys.wake}:trace"


async def sync(
    client: AsyncRedis, queues: Sequence[tuple[QueueName, BackgroundQueueSpec]]
) -> dict[str, Control]:
    """Write every queue's control keys and read them back (one round trip)."""
    pipe = client.pipeline(transaction=False)
    counts: list[tuple[int, bool]] = []
    for queue, spec in queues:
        pk = paused_key(queue)
        if spec.paused:
            pipe.hset(pk, "spec", "1")
        else:
            pipe.hdel(pk, "spec")
        doc = limits_of(spec)
        if doc is None:
            pipe.delete(limits_key(queue))
        else:
            pipe.set(limits_key(queue), doc)
        pipe.exists(pk)
        pipe.hmget(queue.keys.stats, "succeeded", "retried", "dead", "cancelled", "released")
        pipe.get(wake_trace_key(queue))
        for band_key in queue.keys.ready:
            pipe.xpending(band_key, "workers")
        keyed = spec.limits is not None and bool(spec.limits.keys)
        if keyed:  # EVAL, not EVALSHA: a cold script cache costs no extra round trip
            enough = spec.scaling.max_replicas * spec.scaling.target_jobs_per_pod(
                spec.worker.concurrency
            )  # more may start than maxReplicas can run: the cap cannot bind, stop counting
            pipe.execute_command(
                "EVAL", SCRIPTS.parked.text, 1, queue.keys.ready[1], queue.keys.prefix,
                MAX_PARK_LISTS, MAX_RUN_MEMBERS, enough,
            )  # fmt: skip
        counts.append((5 + len(queue.keys.ready) + int(keyed), keyed))
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    out: dict[str, Control] = {}
    at = 0
    for (queue, _), (per, keyed) in zip(queues, counts, strict=True):
        part = replies[at : at + per]
        at += per
        exists, counters, trace = part[2], part[3], part[4]
        completed = 0
        if isinstance(counters, list):
            completed = sum(int(c or 0) for c in counters)
        parked = 0
        for summary in part[5 : 5 + len(queue.keys.ready)]:
            if isinstance(summary, dict):
                for consumer in summary.get("consumers") or []:
                    if str(consumer.get("name")) == PARK_CONSUMER:
                        parked += int(consumer.get("pending") or 0)
        out[str(queue)] = Control(
            paused=bool(exists) and not isinstance(exists, Exception),
            completed=completed,
            parked=parked,
            summary=ParkedSummary.from_reply(part[-1]) if keyed else None,
            wake_trace=trace if isinstance(trace, str) and trace else None,
        )
    return out
