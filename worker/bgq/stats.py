"""Read a queue's demand and its workers' heartbeats: what the operator and ``bgq stats`` show.

One EVAL of ``lua/demand.lua`` per queue, all queues pipelined into ONE round trip. Missing
streams, groups or keys read as zero, so a queue nobody has used yet is simply empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bgq.connection import AsyncRedis, SyncRedis
from bgq.protocol import QueueName
from bgq.scripts import SCRIPTS


@dataclass(frozen=True, slots=True)
class WorkerHeartbeat:
    """One worker's heartbeat record (``P:worker:<consumer>``)."""

    consumer: str
    pod: str
    pid: int
    state: str
    """``idle`` | ``busy`` | ``draining``"""
    in_flight: int
    oldest_started_ms: int
    heartbeat_ms: int
    concurrency: int
    version: str

    @classmethod
    def from_hash(cls, consumer: str, fields: dict[str, str]) -> WorkerHeartbeat:
        """Build from the HGETALL of a heartbeat hash; missing or garbled fields read as 0/''."""

        def num(name: str) -> int:
            try:
                return int(fields.get(name, 0))
            except (TypeError, ValueError):
                return 0

        return cls(
            consumer=consumer,
            pod=fields.get("pod", ""),
            pid=num("pid"),
            state=fields.get("state", ""),
            in_flight=num("in_flight"),
            oldest_started_ms=num("oldest_started_ms"),
            heartbeat_ms=num("heartbeat_ms"),
            concurrency=num("concurrency"),
            version=fields.get("version", ""),
        )


@dataclass(frozen=True, slots=True)
class QueueDemand:
    """How much work a queue has, read in one atomic script call."""

    backlog: int = 0
    """Entries never delivered, summed over the priority bands."""
    in_flight: int = 0
    """Entries delivered and not yet settled (pending entries lists), summed over bands."""
    delayed: int = 0
    """Jobs in the delayed set (scheduled jobs and retries waiting for their backoff)."""
    due: int = 0
    """Delayed jobs due by now + the due window."""
    dead: int = 0
    """Dead letters."""
    oldest_ready_age_ms: int = 0
    """Age of the oldest undelivered entry (0 when there is no backlog)."""
    workers: list[WorkerHeartbeat] = field(default_factory=list)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse(reply: Sequence[Any]) -> QueueDemand:
    nums = [int(x) for x in reply[:7]]
    workers: list[WorkerHeartbeat] = []
    rest = reply[7:]
    for i in range(0, len(rest), 2):
        flat = [_text(x) for x in rest[i + 1]]
        fields = dict(zip(flat[0::2], flat[1::2], strict=True))
        workers.append(WorkerHeartbeat.from_hash(_text(rest[i]), fields))
    return QueueDemand(
        backlog=nums[0],
        in_flight=nums[1],
        delayed=nums[2],
        due=nums[3],
        dead=nums[4],
        oldest_ready_age_ms=nums[5],
        workers=workers,
    )


def _args(queue: QueueName, now_ms: int, due_window_ms: int) -> list[Any]:
    keys = queue.keys
    return [SCRIPTS.demand.text, 1, keys.ready[1], keys.prefix, now_ms, due_window_ms]


def _queue(q: str | QueueName) -> QueueName:
    return q if isinstance(q, QueueName) else QueueName.parse(q)


async def read_demand(
    redis_client: AsyncRedis,
    queues: Iterable[str | QueueName],
    now_ms: int,
    due_window_ms: int = 0,
) -> dict[str, QueueDemand]:
    """Demand of every queue in ``queues``, keyed by full queue name, in ONE round trip.

    Uses EVAL (not EVALSHA) inside a non-transactional pipeline so a cold script cache never
    costs an extra round trip. Raises redis-py's errors when Redis is unreachable.
    """
    names = [_queue(q) for q in queues]
    if not names:
        return {}
    pipe = redis_client.pipeline(transaction=False)
    for q in names:
        pipe.execute_command("EVAL", *_args(q, now_ms, due_window_ms))
    replies = await pipe.execute()
    return {str(q): _parse(r) for q, r in zip(names, replies, strict=True)}


def read_demand_sync(
    redis_client: SyncRedis,
    queues: Iterable[str | QueueName],
    now_ms: int,
    due_window_ms: int = 0,
) -> dict[str, QueueDemand]:
    """The blocking twin of :func:`read_demand` (for the sync client and the CLI)."""
    names = [_queue(q) for q in queues]
    if not names:
        return {}
    pipe = redis_client.pipeline(transaction=False)
    for q in names:
        pipe.execute_command("EVAL", *_args(q, now_ms, due_window_ms))
    replies = pipe.execute()
    return {str(q): _parse(r) for q, r in zip(names, replies, strict=True)}


async def read_workers(redis_client: AsyncRedis, queue: str | QueueName) -> list[WorkerHeartbeat]:
    """The live heartbeat records of ``queue``'s workers (expired records are skipped)."""
    q = _queue(queue)
    keys = q.keys
    members = await redis_client.zrange(keys.workers, 0, -1)
    if not members:
        return []
    pipe = redis_client.pipeline(transaction=False)
    consumers = [_text(m) for m in members]
    for c in consumers:
        pipe.hgetall(keys.worker(c))
    replies = await pipe.execute()
    out = []
    for c, h in zip(consumers, replies, strict=True):
        if h:
            out.append(WorkerHeartbeat.from_hash(c, {_text(k): _text(v) for k, v in h.items()}))
    return out


__all__ = ["QueueDemand", "WorkerHeartbeat", "read_demand", "read_demand_sync", "read_workers"]
