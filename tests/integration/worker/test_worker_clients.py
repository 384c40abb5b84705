"""Producer clients against a real redis-server (no worker): statuses, lookups, waits."""

from __future__ import annotations

import pytest
import redis

import bgq
from bgq.testing import fetch_jobs, settle_jobs
from conftest import QUEUE


def test_enqueue_many_reports_each_outcome(redis_url: str) -> None:
    with bgq.Client(redis_url) as client:
        first = client.enqueue_with(QUEUE, "echo", args=[0], job_id="same")
        jobs = client.enqueue_many(
            QUEUE,
            [
                bgq.JobSpec("echo", args=[1], job_id="same"),
                bgq.JobSpec("echo", args=[2], unique_key="u"),
                bgq.JobSpec("echo", args=[3], unique_key="u"),
                bgq.JobSpec("echo", args=[4], delay=60, priority="low"),
            ],
        )
        assert first.created
        assert [j.status for j in jobs] == ["exists", "enqueued", "duplicate", "enqueued"]
        assert jobs[2].id == jobs[1].id
        scheduled = client.get(QUEUE, jobs[3].id)
        assert scheduled.state is bgq.JobState.SCHEDULED
        assert scheduled.envelope is not None and scheduled.envelope.priority == 2
        demand = client.stats(QUEUE)
        assert (demand.backlog, demand.delayed, demand.due) == (2, 1, 0)
        assert client.cancel(QUEUE, jobs[3].id) == "cancelled"
        assert client.cancel(QUEUE, "nope") == "missing"
        assert client.stats(QUEUE).delayed == 0


def test_wait_times_out_then_sees_the_result(redis_url: str, rdb: redis.Redis) -> None:
    with bgq.Client(redis_url) as client:
        job = client.enqueue(QUEUE, "echo", 5)
        with pytest.raises(bgq.WaitTimeout, match=job.id):
            client.wait(QUEUE, job.id, timeout=0.2)
        [delivery] = fetch_jobs(rdb, QUEUE, count=1)
        assert client.get(QUEUE, job.id).state is bgq.JobState.RUNNING
        assert settle_jobs(rdb, QUEUE, [("ok", delivery, "10", "", "")]) == [True]
        assert client.wait(QUEUE, job.id, timeout=5) == 10
        assert settle_jobs(rdb, QUEUE, [("ok", delivery, "11", "", "")]) == [False]


async def test_async_wait_wakes_on_completion(redis_url: str, rdb: redis.Redis) -> None:
    import asyncio
    import time

    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue(QUEUE, "echo", 1)
        waiter = asyncio.create_task(client.wait(QUEUE, job.id, timeout=10))
        await asyncio.sleep(0.1)  # let the waiter register (the behaviour under test)
        [delivery] = fetch_jobs(rdb, QUEUE, count=1)
        t0 = time.monotonic()
        settle_jobs(rdb, QUEUE, [("dead", delivery, "not-retryable", "ValueError: x", "tb")])
        with pytest.raises(bgq.JobFailed, match="ValueError: x"):
            await waiter
        assert time.monotonic() - t0 < 0.5  # woken by the push, not by polling
