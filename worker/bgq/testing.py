"""Helpers for tests that play the worker's part by hand (e.g. to hold a job in ``running``).

They go through :mod:`bgq._calls`, the one owner of the protocol scripts' argument and reply
formats, so tests of other components do not depend on those formats.
"""

from __future__ import annotations

import time
from typing import Any

from bgq._calls import (
    CANCELLED,
    RELEASE,
    Dead,
    Delivery,
    Ok,
    RetryAt,
    SettleRecord,
    ensure_groups_sync,
    fetch_sync,
    settle_sync,
)
from bgq.connection import SyncRedis
from bgq.protocol import QueueName


def _queue(queue: str | QueueName) -> QueueName:
    return queue if isinstance(queue, QueueName) else QueueName.parse(queue)


def fetch_jobs(
    client: SyncRedis,
    queue: str | QueueName,
    consumer: str = "test:1",
    *,
    count: int = 1,
    lease_ms: int = 30_000,
    max_deliveries: int = 5,
) -> list[Delivery]:
    """Fetch up to ``count`` jobs as ``consumer`` (creating the consumer groups if needed)."""
    keys = _queue(queue).keys
    ensure_groups_sync(client, keys)
    reply = fetch_sync(
        client,
        keys,
        consumer,
        count,
        int(time.time() * 1000),
        lease_ms=lease_ms,
        max_deliveries=max_deliveries,
        result_ttl_ms=86_400_000,
        dead_retention_ms=604_800_000,
    )
    return reply.deliveries


def record(op: str, a: Any = "", b: str = "", c: str = "") -> SettleRecord:
    """A settle record from its wire form (docs/protocol.md): op ``ok`` (a = result JSON),
    ``retry`` (a = due ms, b = error, c = traceback), ``dead`` (a = reason, b, c),
    ``release`` or ``cancelled``."""
    if op == "ok":
        return Ok(str(a))
    if op == "retry":
        return RetryAt(int(a), b, c)
    if op == "dead":
        return Dead(str(a), b, c)
    if op == "release":
        return RELEASE
    if op == "cancelled":
        return CANCELLED
    raise ValueError(f"unknown settle op {op!r}")


def settle_jobs(
    client: SyncRedis,
    queue: str | QueueName,
    records: list[tuple[str, Delivery, Any, str, str]],
    result_ttl_ms: int = 86_400_000,
) -> list[bool]:
    """Settle deliveries: records of ``(op, delivery, a, b, c)`` (see :func:`record`);
    returns per record whether it was applied (False: stale, the job was reclaimed)."""
    keys = _queue(queue).keys
    typed = [(record(op, a, b, c), d) for op, d, a, b, c in records]
    stale = set(
        settle_sync(
            client,
            keys,
            int(time.time() * 1000),
            typed,
            result_ttl_ms=result_ttl_ms,
            dead_retention_ms=604_800_000,
        )
    )
    return [i not in stale for i in range(len(records))]


__all__ = ["Delivery", "fetch_jobs", "record", "settle_jobs"]
