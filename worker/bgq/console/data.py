"""What the console shows, read from Redis (no Kubernetes API needed for the figures).

* the queues: the ones named in the configuration plus those an operator decides for on this
  Redis (the ``bgq:queues`` index of :mod:`bgq.decisions`);
* per queue, in two pipelined round trips for all queues: the demand script (backlog, in
  flight, due, dead, workers), the last decision record (replicas, desired, Ready, reason), the
  completion counters (jobs/s, as the difference between two reads) and the pause key;
* the decision stream of the last hour for the queue chart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bgq import decisions
from bgq.client import AsyncClient
from bgq.control import paused_key
from bgq.protocol import QueueName
from bgq.stats import QueueDemand, WorkerHeartbeat, read_demand

DISCOVERY_WINDOW_MS = 24 * 3600 * 1000
"""Queues whose last decision record is older than this are no longer listed."""
MAX_QUEUES = 1000
"""At most this many discovered queues are listed (the most recently recorded ones)."""
CHART_WINDOW_MS = 3600 * 1000
_COMPLETED = ("succeeded", "dead", "cancelled")


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One line of the overview."""

    queue: str
    namespace: str
    name: str
    backlog: int
    in_flight: int
    due: int
    delayed: int
    dead: int
    workers: int
    busy_workers: int
    replicas: int | None
    desired: int | None
    ready_replicas: int | None
    ready: str
    """The Ready condition's status (``True``/``False``/``Unknown``; ``-`` without operator)."""
    ready_reason: str
    reason: str
    bound_by: str
    jobs_per_s: float | None
    paused: bool
    oldest_age_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker of a queue (its heartbeat)."""

    consumer: str
    pod: str
    state: str
    in_flight: int
    concurrency: int
    heartbeat_age_s: float
    running_for_s: float | None
    version: str

    @classmethod
    def from_heartbeat(cls, hb: WorkerHeartbeat, now_ms: int) -> WorkerRow:
        return cls(
            consumer=hb.consumer,
            pod=hb.pod,
            state=hb.state or "?",
            in_flight=hb.in_flight,
            concurrency=hb.concurrency,
            heartbeat_age_s=round(max(0, now_ms - hb.heartbeat_ms) / 1000, 1),
            running_for_s=(
                round(max(0, now_ms - hb.oldest_started_ms) / 1000, 1)
                if hb.oldest_started_ms else None
            ),
            version=hb.version,
        )


@dataclass(slots=True)
class _Rate:
    at: float
    total: int
    rate: float | None = None


@dataclass
class ChartData:
    """The last hour of a queue's decision records, as uPlot columns (seconds since epoch)."""

    t: list[float] = field(default_factory=list)
    demand: list[float | None] = field(default_factory=list)
    desired: list[int] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)
    """Decisions that changed ``desired``: time, from, to, boundBy, reason."""

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, "demand": self.demand, "desired": self.desired,
                "replicas": self.replicas, "marks": self.marks}  # fmt: skip


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class ConsoleData:
    """Reads for the console pages over one :class:`bgq.AsyncClient`."""

    def __init__(
        self, client: AsyncClient, queues: Sequence[QueueName] = (), discover: bool = True
    ) -> None:
        self.client = client
        self.redis = client.redis
        self.static = [str(q) for q in queues]
        self.discover = discover
        self._rates: dict[str, _Rate] = {}
        self._shared: tuple[float, dict[str, QueueRow]] = (0.0, {})
        self._lock = asyncio.Lock()

    async def queue_names(self) -> list[str]:
        """The configured queues and (``discover``) those in ``bgq:queues``, sorted."""
        names = set(self.static)
        if self.discover:
            since = int(time.time() * 1000) - DISCOVERY_WINDOW_MS
            found = await self.redis.zrevrangebyscore(
                decisions.QUEUES_INDEX, "+inf", since, start=0, num=MAX_QUEUES
            )
            for member in found:
                try:
                    names.add(str(QueueName.parse(_text(member))))
                except ValueError:
                    continue  # not a queue name: never trusted into a key
        return sorted(names)

    async def overview(self, names: Iterable[str]) -> list[QueueRow]:
        """One row per queue (two round trips whatever the number of queues)."""
        queues = [QueueName.parse(n) for n in names]
        if not queues:
            return []
        now = time.time()
        now_ms = int(now * 1000)
        demand = await read_demand(self.redis, queues, now_ms)
        pipe = self.redis.pipeline(transaction=False)
        for q in queues:
            pipe.xrevrange(decisions.decisions_key(q), "+", "-", count=1)
            pipe.hmget(q.keys.stats, *_COMPLETED)
            pipe.exists(paused_key(q))
        replies = await pipe.execute()
        rows = []
        for i, q in enumerate(queues):
            last, counters, paused = replies[3 * i : 3 * i + 3]
            record = decisions.DecisionRecord.from_fields(last[0][1]) if last else None
            total = sum(int(c or 0) for c in counters)
            rows.append(self._row(q, demand[str(q)], record, self._rate(str(q), now, total),
                                  bool(paused)))  # fmt: skip
        return rows

    async def shared_overview(self, names: Sequence[str], max_age: float = 1.0) -> list[QueueRow]:
        """:meth:`overview` of ``names`` from one computation shared by every page and live
        stream for ``max_age`` seconds: the cost is per console, not per viewer."""
        async with self._lock:
            at, rows = self._shared
            if time.monotonic() - at > max_age or not set(names) <= rows.keys():
                wanted = sorted(set(names) | set(await self.queue_names()))
                fresh = await self.overview(wanted)
                rows = {r.queue: r for r in fresh}
                self._shared = (time.monotonic(), rows)
        return [rows[n] for n in names]

    def _rate(self, queue: str, now: float, total: int) -> float | None:
        """Completed jobs per second between this read and one at least 1 s older."""
        prev = self._rates.get(queue)
        if prev is None or total < prev.total:
            self._rates[queue] = _Rate(now, total)
            return None
        if now - prev.at < 1.0:
            return prev.rate
        rate = round((total - prev.total) / (now - prev.at), 2)
        self._rates[queue] = _Rate(now, total, rate)
        return rate

    @staticmethod
    def _row(
        q: QueueName,
        d: QueueDemand,
        record: decisions.DecisionRecord | None,
        rate: float | None,
        paused: bool,
    ) -> QueueRow:
        return QueueRow(
            queue=str(q), namespace=q.namespace, name=q.name,
            backlog=d.backlog, in_flight=d.in_flight, due=d.due, delayed=d.delayed, dead=d.dead,
            workers=len(d.workers),
            busy_workers=sum(1 for w in d.workers if w.state == "busy"),
            replicas=record.replicas if record else None,
            desired=record.desired if record else None,
            ready_replicas=record.ready if record else None,
            ready=record.condition if record else "-",
            ready_reason=record.condition_reason if record else "",
            reason=record.reason if record else "",
            bound_by=record.bound_by if record else "",
            jobs_per_s=rate, paused=paused,
            oldest_age_s=round(d.oldest_ready_age_ms / 1000, 1),
        )  # fmt: skip

    async def workers(self, queue: QueueName) -> list[WorkerRow]:
        """The queue's live workers (heartbeats), sorted by consumer id."""
        now_ms = int(time.time() * 1000)
        demand = (await read_demand(self.redis, [queue], now_ms))[str(queue)]
        return [WorkerRow.from_heartbeat(hb, now_ms)
                for hb in sorted(demand.workers, key=lambda w: w.consumer)]  # fmt: skip

    async def running_jobs(self, queue: QueueName, consumers: Sequence[str]) -> dict[str, str]:
        """consumer -> a job id it runs (from the running jobs' ``owner``), for the workers
        table; reads at most 200 running jobs."""
        if not consumers:
            return {}
        page = await self.client.list_jobs(queue, states=["running"], limit=200)
        if not page.jobs:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for job in page.jobs:
            pipe.hget(queue.keys.job(job.id), "owner")
        owners = await pipe.execute()
        out: dict[str, str] = {}
        for job, owner in zip(page.jobs, owners, strict=True):
            if owner is not None:
                out.setdefault(_text(owner), job.id)
        return out

    async def chart(self, queue: QueueName, window_ms: int = CHART_WINDOW_MS) -> ChartData:
        """The decision records of the last ``window_ms`` (at most :data:`decisions.MAXLEN`)."""
        since = int(time.time() * 1000) - window_ms
        entries: Any = await self.redis.xrange(
            decisions.decisions_key(queue), f"{since}-0", "+", count=decisions.MAXLEN + 100
        )
        data = ChartData()
        previous: decisions.DecisionRecord | None = None
        for _, fields in entries:
            record = decisions.DecisionRecord.from_fields(fields)
            t = record.ms / 1000
            data.t.append(t)
            data.demand.append(record.demand)
            data.desired.append(record.desired)
            data.replicas.append(record.replicas)
            if previous is None or previous.desired != record.desired:
                data.marks.append({
                    "t": t, "from": previous.desired if previous else None,
                    "to": record.desired, "boundBy": record.bound_by, "reason": record.reason,
                })  # fmt: skip
            previous = record
        return data


__all__ = ["ChartData", "ConsoleData", "QueueRow", "WorkerRow"]
