"""Helpers for tests that play the worker's part by hand (e.g. to hold a job in ``running``).

They wrap the protocol scripts with their exact argument and reply formats, so tests of other
components do not depend on those formats.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from bgq.protocol import QueueName
from bgq.scripts import SCRIPTS


@dataclass(frozen=True, slots=True)
class Delivery:
    """A job handed to a consumer by the fetch script."""

    job_id: str
    band: int
    entry: str
    token: int
    attempt: int
    envelope: str


def _queue(queue: str | QueueName) -> QueueName:
    return queue if isinstance(queue, QueueName) else QueueName.parse(queue)


def fetch_jobs(
    client: redis.Redis,
    queue: str | QueueName,
    consumer: str = "test:1",
    *,
    count: int = 1,
    lease_ms: int = 30_000,
    max_deliveries: int = 5,
) -> list[Delivery]:
    """Fetch up to ``count`` jobs as ``consumer`` (creating the consumer groups if needed)."""
    keys = _queue(queue).keys
    for key in keys.ready:
        try:
            client.xgroup_create(key, "workers", id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    now = int(time.time() * 1000)
    reply = SCRIPTS.fetch.run(
        client,
        [keys.ready[1]],
        [keys.prefix, consumer, count, now, lease_ms, max_deliveries, 86_400_000, 604_800_000],
    )
    flat = json.loads(reply[2])
    return [Delivery(*flat[i : i + 6]) for i in range(0, len(flat), 6)]


def settle_jobs(
    client: redis.Redis,
    queue: str | QueueName,
    records: list[tuple[str, Delivery, Any, str, str]],
    result_ttl_ms: int = 86_400_000,
) -> list[bool]:
    """Settle deliveries: records of ``(op, delivery, a, b, c)`` (see docs/protocol.md);
    returns per record whether it was applied (False: stale, the job was reclaimed)."""
    keys = _queue(queue).keys
    packed = [(op, d.job_id, d.band, d.entry, d.token, a, b, c) for op, d, a, b, c in records]
    reply = SCRIPTS.settle.run(
        client,
        [keys.ready[1]],
        [keys.prefix, int(time.time() * 1000), result_ttl_ms, 604_800_000, json.dumps(packed)],
    )
    stale = {int(i) - 1 for i in reply[1:]}
    return [i not in stale for i in range(len(records))]


__all__ = ["Delivery", "fetch_jobs", "settle_jobs"]
