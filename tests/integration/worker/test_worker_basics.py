"""In-process worker against a real redis-server: running, results, retries, dead letters,
timeouts, cancel, unique jobs, malformed entries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, cast

import pytest
import redis

import bgq
from bgq.protocol import QueueName
from conftest import QUEUE, StartWorker, await_until


async def test_async_thread_and_process_tasks_return_results(
    start_worker: StartWorker, redis_url: str
) -> None:
    await start_worker()
    async with bgq.AsyncClient(redis_url) as client:
        a = await client.enqueue(QUEUE, "echo", {"x": [1, 2]})
        b = await client.enqueue_with(QUEUE, "thread_add", args=[2], kwargs={"b": 3})
        c = await client.enqueue(QUEUE, "cpu_square", 7)
        assert await client.wait(QUEUE, a.id, timeout=10) == {"x": [1, 2]}
        assert await client.wait(QUEUE, b.id, timeout=10) == 5
        assert await client.wait(QUEUE, c.id, timeout=20) == 49
        info = await client.get(QUEUE, a.id)
        assert info.state is bgq.JobState.SUCCEEDED
        assert info.attempt == 1 and info.started_ms >= info.enqueued_ms


async def test_retries_follow_backoff_then_succeed(
    start_worker: StartWorker, redis_url: str, rdb: redis.Redis
) -> None:
    await start_worker(backoff_base_seconds=0.2, backoff_max_seconds=0.4)
    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue(QUEUE, "flaky", "fl", 2)
        assert await client.wait(QUEUE, job.id, timeout=15) == 3
    times = [float(x.split(":")[1]) for x in cast(list[str], rdb.lrange("bgqtest:fl", 0, -1))]
    attempts = [int(x.split(":")[0]) for x in cast(list[str], rdb.lrange("bgqtest:fl", 0, -1))]
    assert attempts == [1, 2, 3]
    # full jitter: each gap is at most the capped exponential ceiling (+ scheduling slack)
    assert times[1] - times[0] <= 0.2 + 0.5
    assert times[2] - times[1] <= 0.4 + 0.5


async def test_exhausted_retries_dead_letter_with_traceback(
    start_worker: StartWorker, redis_url: str
) -> None:
    await start_worker()
    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue_with(QUEUE, "flaky", args=["fx", 99], retries=1)
        with pytest.raises(bgq.JobFailed) as caught:
            await client.wait(QUEUE, job.id, timeout=10)
        exc = caught.value
        assert exc.reason == "retries-exhausted"
        assert "attempt 2 fails" in exc.error
        assert "RuntimeError" in exc.traceback
        info = await client.get(QUEUE, job.id)
        assert info.state is bgq.JobState.DEAD and info.attempt == 2
        dead = await client.dead_letters(QUEUE)
        assert [d.job_id for d in dead] == [job.id]
        assert dead[0].reason == "retries-exhausted" and "Traceback" in dead[0].traceback
        assert dead[0].task == "flaky"


async def test_non_retryable_exception_goes_dead_at_once(
    start_worker: StartWorker, redis_url: str
) -> None:
    await start_worker()
    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue(QUEUE, "picky")
        with pytest.raises(bgq.JobFailed) as caught:
            await client.wait(QUEUE, job.id, timeout=10)
        exc = caught.value
        assert exc.reason == "not-retryable"
        assert (await client.get(QUEUE, job.id)).attempt == 1


async def test_replay_dead_letter_runs_again(start_worker: StartWorker, redis_url: str) -> None:
    w = await start_worker()
    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue_with(QUEUE, "flaky", args=["rp", 1], retries=0)
        with contextlib.suppress(bgq.JobFailed):
            await client.wait(QUEUE, job.id, timeout=10)
        assert (await client.stats(QUEUE)).dead == 1
        # attempt restarts at 1, so flaky fails again once: replay twice
        res = await client.replay_dead(QUEUE)
        assert res.replayed == 1 and res.skipped == 0
        await await_until(lambda: w.worker.metrics.counts["dead"] >= 2, 10, "second death")
        dead = await client.dead_letters(QUEUE)
        assert len(dead) == 1
        assert (await client.purge_dead(QUEUE)) == 1
        assert (await client.stats(QUEUE)).dead == 0


async def test_async_timeout_cancels_and_retries_then_dead(
    start_worker: StartWorker, redis_url: str, rdb: redis.Redis
) -> None:
    await start_worker()
    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue(QUEUE, "slow_async", "to")
        with pytest.raises(bgq.JobFailed) as caught:
            await client.wait(QUEUE, job.id, timeout=10)
        exc = caught.value
        assert "JobTimeout" in exc.error and exc.reason == "retries-exhausted"
    assert rdb.lrange("bgqtest:to", 0, -1) == ["cancelled", "cancelled"]


async def test_process_task_hard_timeout_kills_child(
    start_worker: StartWorker, redis_url: str, rdb: redis.Redis
) -> None:
    await start_worker()
    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue(QUEUE, "cpu_forever", "cf")
        t0 = time.monotonic()
        with pytest.raises(bgq.JobFailed) as caught:
            await client.wait(QUEUE, job.id, timeout=20)
        exc = caught.value
        assert "killed" in exc.error
        assert time.monotonic() - t0 < 10
    pid = int(cast(list[str], rdb.lrange("bgqtest:cf", 0, -1))[0].split(":")[1])
    await await_until(lambda: not _alive(pid), 5, "the child process to be gone")


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); check its state
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_cancel_queued_and_running(
    start_worker: StartWorker, redis_url: str, rdb: redis.Redis
) -> None:
    async with bgq.AsyncClient(redis_url) as client:
        queued = await client.enqueue_with(QUEUE, "echo", args=[1], delay=30)
        assert await client.cancel(QUEUE, queued.id) == "cancelled"
        with pytest.raises(bgq.JobCancelled):
            await client.wait(QUEUE, queued.id, timeout=1)
        await start_worker(lease_seconds=0.6)
        running = await client.enqueue(QUEUE, "sleepy", 30, "cx")
        await await_until(lambda: rdb.llen("bgqtest:cx") == 1, 10, "the job to start")
        assert await client.cancel(QUEUE, running.id) == "cancelling"
        with pytest.raises(bgq.JobCancelled):
            await client.wait(QUEUE, running.id, timeout=5)
        assert await client.cancel(QUEUE, running.id) == "cancelled"


async def test_unique_until_complete_and_idempotent_job_id(
    start_worker: StartWorker, redis_url: str
) -> None:
    async with bgq.AsyncClient(redis_url) as client:
        a = await client.enqueue_with(QUEUE, "echo", args=[1], unique_key="k1")
        b = await client.enqueue_with(QUEUE, "echo", args=[2], unique_key="k1")
        assert a.created and b.status == "duplicate" and b.id == a.id
        c = await client.enqueue_with(QUEUE, "echo", args=[3], job_id="fixed")
        d = await client.enqueue_with(QUEUE, "echo", args=[4], job_id="fixed")
        assert c.created and d.status == "exists"
        await start_worker()
        assert await client.wait(QUEUE, a.id, timeout=10) == 1
        assert await client.wait(QUEUE, "fixed", timeout=10) == 3
        # completed: the unique key is free again
        e = await client.enqueue_with(QUEUE, "echo", args=[5], unique_key="k1")
        assert e.created and await client.wait(QUEUE, e.id, timeout=10) == 5
        f = await client.enqueue_with(QUEUE, "echo", args=[6], unique_key="t", unique_ttl=30)
        assert await client.wait(QUEUE, f.id, timeout=10) == 6
        g = await client.enqueue_with(QUEUE, "echo", args=[7], unique_key="t", unique_ttl=30)
        assert g.status == "duplicate"


async def test_delayed_and_priority(start_worker: StartWorker, redis_url: str) -> None:
    async with bgq.AsyncClient(redis_url) as client:
        later = await client.enqueue_with(QUEUE, "echo", args=["later"], delay=0.5)
        t0 = time.time()
        await start_worker()
        assert await client.wait(QUEUE, later.id, timeout=10) == "later"
        info = await client.get(QUEUE, later.id)
        assert info.started_ms / 1000 >= t0 + 0.4


async def test_high_priority_band_is_read_first(
    start_worker: StartWorker, redis_url: str, rdb: redis.Redis
) -> None:
    async with bgq.AsyncClient(redis_url) as client:
        low = [await client.enqueue_with(QUEUE, "echo", args=[i], priority="low") for i in range(5)]
        high = await client.enqueue_with(QUEUE, "echo", args=["h"], priority="high")
        await start_worker(concurrency=1, prefetch=0)
        await client.wait(QUEUE, low[-1].id, timeout=10)
        h = await client.get(QUEUE, high.id)
        first_low = await client.get(QUEUE, low[0].id)
        assert h.started_ms <= first_low.started_ms


async def test_malformed_entries_and_payloads_dead_letter_and_worker_survives(
    start_worker: StartWorker, redis_url: str, rdb: redis.Redis
) -> None:
    keys = QueueName.parse(QUEUE).keys
    w = await start_worker()
    rdb.xadd(keys.ready[1], {"junk": "1"})  # no id field
    rdb.xadd(keys.ready[1], {"id": "ghost"})  # no job hash
    rdb.hset(keys.job("badenv"), mapping={"env": "{not json", "state": "queued", "attempt": 1,
                                           "band": 1, "entry": "", "token": 0})
    rdb.xadd(keys.ready[1], {"id": "badenv"})
    async with bgq.AsyncClient(redis_url) as client:
        unknown = await client.enqueue(QUEUE, "no_such_task")
        bad_result = await client.enqueue(QUEUE, "returns_object")
        good = await client.enqueue(QUEUE, "echo", "still fine")
        assert await client.wait(QUEUE, good.id, timeout=10) == "still fine"
        await await_until(lambda: rdb.xlen(keys.dead) >= 5, 10, "5 dead letters")
        dead = {d.reason: d for d in await client.dead_letters(QUEUE)}
        assert set(dead) == {"malformed-entry", "missing-job-record", "malformed-envelope",
                             "unknown-task", "result-not-serialisable"}
        assert "no_such_task" in dead["unknown-task"].error
        assert dead["unknown-task"].job_id == unknown.id
        assert dead["result-not-serialisable"].job_id == bad_result.id
        assert "has no \"id\" field" in dead["malformed-entry"].error
    assert w.task is not None
    assert not w.task.done()


def test_stale_ack_after_reclaim_is_rejected(redis_url: str, rdb: redis.Redis) -> None:
    """Worker A's lease expires, B reclaims the job; A's late completion is rejected."""
    import json

    from bgq.scripts import SCRIPTS

    keys = QueueName.parse(QUEUE).keys
    for k in keys.ready:
        rdb.xgroup_create(k, "workers", id="0", mkstream=True)
    client = bgq.Client(redis_url)
    job = client.enqueue(QUEUE, "echo", 1)

    def fetch(consumer: str, lease_ms: int) -> list[Any]:
        now = int(time.time() * 1000)
        reply = SCRIPTS.fetch.run(rdb, [keys.ready[1]], [keys.prefix, consumer, 10, now,
                                                         lease_ms, 5, 60000, 60000])
        return cast(list[Any], json.loads(reply[2]))

    def settle(*record: Any) -> list[Any]:
        now = int(time.time() * 1000)
        return cast(list[Any], SCRIPTS.settle.run(
            rdb, [keys.ready[1]], [keys.prefix, now, 60000, 60000, json.dumps([record])]))

    a = fetch("A", 100)
    assert len(a) == 6
    _, band, entry, token_a = a[:4]
    time.sleep(0.15)  # let A's 100 ms lease expire (the condition under test)
    rdb.delete(keys.prefix + ":reclaiming")
    b = fetch("B", 100)
    assert b[2] == entry and b[3] == token_a + 1
    assert settle("ok", job.id, band, entry, token_a, "1", "", "") == [0, 1]  # rejected
    assert client.get(QUEUE, job.id).state is bgq.JobState.RUNNING
    renew = SCRIPTS.renew.run(rdb, [keys.ready[1]],
                              [keys.prefix, "A", job.id, band, entry, token_a])
    assert renew == [0]  # A learns it lost the lease
    assert settle("ok", job.id, band, entry, b[3], "2", "", "") == [1]  # B's completion
    info = client.get(QUEUE, job.id)
    assert info.result == 2 and info.lease_expiries == 1
    client.close()


def test_errors_are_clear(redis_url: str) -> None:
    client = bgq.Client(redis_url, max_payload_bytes=1000)
    caught: pytest.ExceptionInfo[bgq.BgqError]  # both reused for each expected error below
    exc: bgq.BgqError
    with pytest.raises(bgq.PayloadError) as caught:
        client.enqueue(QUEUE, "echo", "x" * 2000)
    exc = caught.value
    assert "over the limit of 1000 bytes" in str(exc)
    with pytest.raises(bgq.PayloadError) as caught:
        client.enqueue(QUEUE, "echo", when={1, 2})
    exc = caught.value
    assert "keyword argument 'when' (set)" in str(exc)
    with pytest.raises(bgq.InvalidQueueName) as caught:
        client.enqueue("Bad_Name", "echo")
    exc = caught.value
    assert "DNS-1123" in str(exc)
    client.close()
    down = bgq.Client("redis://:secret@127.0.0.1:1/0")
    with pytest.raises(bgq.RedisUnavailable) as caught:
        down.enqueue(QUEUE, "echo", 1)
    exc = caught.value
    assert "127.0.0.1:1" in str(exc) and "secret" not in str(exc)
    with pytest.raises(bgq.RedisUnavailable):
        down.get(QUEUE, "nope")
    with pytest.raises(bgq.JobNotFound) as caught:
        bgq.Client(redis_url).get(QUEUE, "nope")
    exc = caught.value
    assert "nope" in str(exc)
    assert isinstance(redis.Redis, type)


async def test_thread_task_timeout_sets_cancel_requested(
    start_worker: StartWorker, redis_url: str, rdb: redis.Redis
) -> None:
    await start_worker()
    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue(QUEUE, "thread_overrun", "tt")
        with pytest.raises(bgq.JobFailed) as caught:
            await client.wait(QUEUE, job.id, timeout=10)
        assert "JobTimeout" in caught.value.error and "thread was abandoned" in caught.value.error
    await await_until(lambda: rdb.llen("bgqtest:tt") == 1, 5, "the thread to notice")
    assert rdb.lrange("bgqtest:tt", 0, -1) == ["cancel_requested:True"]


async def test_retry_exception_with_explicit_delay(
    start_worker: StartWorker, redis_url: str, rdb: redis.Redis
) -> None:
    await start_worker()
    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue(QUEUE, "retry_later", "rl")
        assert await client.wait(QUEUE, job.id, timeout=10) == 2
    t1, t2 = (float(x.split(":")[1]) for x in cast(list[str], rdb.lrange("bgqtest:rl", 0, -1)))
    assert 0.45 <= t2 - t1 <= 1.5


async def test_lost_lease_stops_local_run_without_settling(
    start_worker: StartWorker, redis_url: str, rdb: redis.Redis
) -> None:
    keys = QueueName.parse(QUEUE).keys
    w = await start_worker(lease_seconds=0.6)
    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue(QUEUE, "sleepy", 30, "ll")
        await await_until(lambda: rdb.llen("bgqtest:ll") == 1, 10, "the job to start")
        rdb.hincrby(keys.job(job.id), "token", 1)  # as if another worker had reclaimed it
        await await_until(lambda: w.worker.metrics.counts["leases_lost"] == 1, 5, "lost lease")
        await await_until(lambda: w.worker.running == 0, 5, "the local run to stop")
        info = await client.get(QUEUE, job.id)
        assert info.state is bgq.JobState.RUNNING  # untouched: the new owner settles it
        assert w.worker.metrics.counts["succeeded"] == 0


async def test_drain_hands_back_a_job_that_ignores_cancellation(
    start_worker: StartWorker, redis_url: str, rdb: redis.Redis
) -> None:
    w = await start_worker(drain_seconds=0.2)
    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue(QUEUE, "stubborn", "sb")
        await await_until(lambda: rdb.llen("bgqtest:sb") == 1, 10, "the job to start")
        w.worker.request_stop()
        assert w.task is not None
        assert await asyncio.wait_for(w.task, 10) == 0
        info = await client.get(QUEUE, job.id)
        assert info.state is bgq.JobState.QUEUED and info.attempt == 1
        assert (await client.stats(QUEUE)).backlog == 1
        assert w.worker.metrics.drain["released_deadline"] == 1
