"""The real worker runtime under pause and limits (two in-process workers, real redis-server)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import redis

import bgq
from bgq.control import limits_document, set_limits, set_paused
from bgq.protocol import QueueName
from conftest import QUEUE, StartWorker, await_until

Q = QueueName.parse(QUEUE)


def job_states(rdb: redis.Redis, ids: list[str]) -> list[dict[str, str]]:
    pipe = rdb.pipeline(transaction=False)
    for i in ids:
        pipe.hgetall(Q.keys.job(i))
    return cast(list[dict[str, str]], pipe.execute())


async def test_per_key_concurrency_holds_across_workers_and_keeps_order(
    redis_url: str, rdb: redis.Redis, start_worker: StartWorker
) -> None:
    set_limits(
        rdb, Q, limits_document(keys=[{"name": "t", "key_from": "kwargs.x", "concurrency": 2}])
    )
    client = bgq.Client(redis_url)
    ids = {"a": [f"a{i}" for i in range(10)], "b": [f"b{i}" for i in range(6)]}
    for tenant, tenant_ids in ids.items():
        for job_id in tenant_ids:
            client.enqueue_with(QUEUE, "pause", kwargs={"ms": 120, "x": tenant}, job_id=job_id)
    await start_worker(consumer="w1", concurrency=10)
    await start_worker(consumer="w2", concurrency=10)
    peak = {"a": 0, "b": 0}
    deadline = time.monotonic() + 30
    everything = ids["a"] + ids["b"]
    while time.monotonic() < deadline:
        states = job_states(rdb, everything)
        for tenant, seen in list(peak.items()):
            running = sum(
                1 for i, h in zip(everything, states, strict=True)
                if i.startswith(tenant) and h.get("state") == "running"
            )  # fmt: skip
            peak[tenant] = max(seen, running)
        if all(h.get("state") == "succeeded" for h in states):
            break
        await asyncio.sleep(0.01)
    states = job_states(rdb, everything)
    assert all(h.get("state") == "succeeded" for h in states), states  # nothing lost
    assert peak == {"a": 2, "b": 2}  # the limit was reached and never exceeded
    started = {i: int(h["started_ms"]) for i, h in zip(everything, states, strict=True)}
    for tenant_ids in ids.values():  # order within a key is kept
        assert [started[i] for i in tenant_ids] == sorted(started[i] for i in tenant_ids)
    # b was not stuck behind a's 10 jobs: it finished long before a's last started
    assert max(started[i] for i in ids["b"]) < max(started[i] for i in ids["a"])


async def test_pause_then_resume_with_running_workers(
    redis_url: str, rdb: redis.Redis, start_worker: StartWorker
) -> None:
    await start_worker(consumer="w1", concurrency=5)
    client = bgq.Client(redis_url)
    set_paused(rdb, Q, True, "cli")
    ids = [client.enqueue_with(QUEUE, "pause", kwargs={"ms": 1, "x": i}, job_id=f"p{i}").id
           for i in range(5)]  # fmt: skip
    await asyncio.sleep(1.5)  # idle workers fetch about every second: they would have run them
    assert all(h.get("state") == "queued" for h in job_states(rdb, ids))
    set_paused(rdb, Q, False, "cli")
    await await_until(
        lambda: all(h.get("state") == "succeeded" for h in job_states(rdb, ids)), 10,
        "all jobs done after resume",
    )  # fmt: skip
    stats: Any = rdb.hget(Q.keys.stats, "succeeded")
    assert int(stats) == 5
