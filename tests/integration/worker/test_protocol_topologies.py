"""The core protocol on standalone Redis AND a real 3+3 Redis Cluster (``topology`` fixture):
enqueue, fetch, settle, retry, delayed, dead letters, unique, cancel, drain (hand back), wait,
the randomised invariant run, and a demand read for queues on every primary. The worker's part
is played with ``bgq.testing`` through the topology's own client (redis-py's cluster client on
a cluster), so every script runs where its queue's slot lives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

import bgq
from bgq.connection import SyncRedis, async_client, sync_client
from bgq.protocol import QueueName
from bgq.settings import RedisSettings
from bgq.stats import read_demand
from bgq.testing import fetch_jobs, settle_jobs

Q = "topo/jobs"
KEYS = QueueName.parse(Q).keys


@pytest.fixture
def r(topology: RedisSettings) -> Iterator[SyncRedis]:
    client = sync_client(topology)
    yield client
    client.close()


@pytest.fixture
def client(topology: RedisSettings) -> Iterator[bgq.Client]:
    with bgq.Client(redis_settings=topology, namespace="topo") as c:
        yield c


def wait_for(cond: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := cond()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.01)
    return value


def test_enqueue_fetch_settle_and_wait(client: bgq.Client, r: SyncRedis) -> None:
    job = client.enqueue(Q, "echo", 7)
    assert job.created
    [d] = fetch_jobs(r, Q, "w1")
    assert d.job_id == job.id and client.get(Q, job.id).state is bgq.JobState.RUNNING
    assert fetch_jobs(r, Q, "w2") == []
    assert settle_jobs(r, Q, [("ok", d, "14", "", "")]) == [True]
    assert client.wait(Q, job.id, timeout=5) == 14
    assert settle_jobs(r, Q, [("ok", d, "15", "", "")]) == [False]  # settled once, fenced


def test_retry_then_succeed(client: bgq.Client, r: SyncRedis) -> None:
    job = client.enqueue(Q, "echo", 1)
    [d] = fetch_jobs(r, Q)
    due = int(time.time() * 1000) + 50
    assert settle_jobs(r, Q, [("retry", d, due, "boom", "tb")]) == [True]
    info = client.get(Q, job.id)
    assert info.state is bgq.JobState.RETRYING and info.error == "boom"
    assert client.stats(Q).delayed == 1
    [again] = wait_for(lambda: fetch_jobs(r, Q), 5, "the retry to come due")
    assert again.job_id == job.id and again.attempt == d.attempt + 1
    settle_jobs(r, Q, [("ok", again, "1", "", "")])
    assert client.get(Q, job.id).state is bgq.JobState.SUCCEEDED


def test_delayed_job_is_not_fetched_before_it_is_due(client: bgq.Client, r: SyncRedis) -> None:
    t0 = time.monotonic()  # before the enqueue: the job is due 0.3 s after it at the earliest
    job = client.enqueue_with(Q, "echo", delay=0.3)
    assert client.get(Q, job.id).state is bgq.JobState.SCHEDULED
    assert fetch_jobs(r, Q) == []
    [d] = wait_for(lambda: fetch_jobs(r, Q), 5, "the delayed job")
    assert d.job_id == job.id and time.monotonic() - t0 >= 0.29


def test_dead_letter_replay_and_purge(client: bgq.Client, r: SyncRedis) -> None:
    job = client.enqueue(Q, "echo", 1)
    [d] = fetch_jobs(r, Q)
    settle_jobs(r, Q, [("dead", d, "not-retryable", "ValueError: x", "tb")])
    with pytest.raises(bgq.JobFailed, match="ValueError"):
        client.wait(Q, job.id, timeout=5)
    [letter] = client.dead_letters(Q)
    assert letter.job_id == job.id
    assert client.replay_dead(Q).replayed == 1
    [again] = fetch_jobs(r, Q)
    settle_jobs(r, Q, [("dead", again, "not-retryable", "again", "")])
    assert client.purge_dead(Q) == 1  # replay moved the first letter back to the queue
    assert client.dead_letters(Q) == []


def test_unique_key_and_job_id(client: bgq.Client) -> None:
    jobs = client.enqueue_many(
        Q,
        [
            bgq.JobSpec("echo", job_id="same"),
            bgq.JobSpec("echo", job_id="same"),
            bgq.JobSpec("echo", unique_key="u"),
            bgq.JobSpec("echo", unique_key="u"),
        ],
    )
    assert [j.status for j in jobs] == ["enqueued", "exists", "enqueued", "duplicate"]
    assert jobs[3].id == jobs[2].id
    assert client.stats(Q).backlog == 2


def test_cancel_queued_and_running(client: bgq.Client, r: SyncRedis) -> None:
    queued = client.enqueue(Q, "echo", 1)
    assert client.cancel(Q, queued.id) == "cancelled"
    running = client.enqueue(Q, "echo", 2)
    [d] = fetch_jobs(r, Q, count=5)
    assert d.job_id == running.id  # the cancelled entry was dropped by fetch
    assert client.cancel(Q, running.id) == "cancelling"
    settle_jobs(r, Q, [("cancelled", d, "", "", "")])
    with pytest.raises(bgq.JobCancelled):
        client.wait(Q, running.id, timeout=5)


def test_drain_hands_back_and_the_old_token_is_fenced(client: bgq.Client, r: SyncRedis) -> None:
    job = client.enqueue(Q, "echo", 1)
    [d] = fetch_jobs(r, Q, "draining")
    assert settle_jobs(r, Q, [("release", d, "", "", "")]) == [True]
    assert client.get(Q, job.id).state is bgq.JobState.QUEUED
    [d2] = fetch_jobs(r, Q, "other")
    assert d2.job_id == job.id and d2.token > d.token
    assert settle_jobs(r, Q, [("ok", d, "1", "", "")]) == [False]
    assert settle_jobs(r, Q, [("ok", d2, "2", "", "")]) == [True]
    assert client.get(Q, job.id).result == 2


async def test_async_client_wait_wakes_on_completion(topology: RedisSettings, r: SyncRedis) -> None:
    async with bgq.AsyncClient(redis_settings=topology, namespace="topo") as ac:
        job = await ac.enqueue(Q, "echo", 1)
        waiter = asyncio.create_task(ac.wait(Q, job.id, timeout=10))
        await asyncio.sleep(0.1)  # let the waiter register (the behaviour under test)
        [d] = fetch_jobs(r, Q)
        t0 = time.monotonic()
        settle_jobs(r, Q, [("ok", d, "3", "", "")])
        assert await waiter == 3
        assert time.monotonic() - t0 < 1.0  # woken by the done-list push, not a poll


@pytest.mark.parametrize("seed", range(2))
def test_random_interleavings_on_the_topology(topology: RedisSettings, seed: int) -> None:
    """The randomised invariant run of test_protocol_invariants, on this topology."""
    from test_protocol_invariants import run_interleavings

    r = sync_client(topology)
    with bgq.Client(redis_settings=topology) as client:
        run_interleavings(r, client, seed)
    r.close()


async def test_demand_read_for_queues_on_every_node(topology: RedisSettings) -> None:
    queues = [QueueName.parse(f"topo/d{i}") for i in range(20)]
    with bgq.Client(redis_settings=topology) as c:
        for i, q in enumerate(queues):
            c.enqueue_many(q, [bgq.JobSpec("echo") for _ in range(i + 1)])
    ac = async_client(topology)
    try:
        demand = await read_demand(ac, queues, int(time.time() * 1000))
    finally:
        await ac.aclose()
    assert [demand[str(q)].backlog for q in queues] == list(range(1, 21))
