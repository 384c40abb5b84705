"""Heartbeat records, probes, metrics, structured logs, demand reads and wake-ups."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import redis
import redis.asyncio

import bgq
from bgq.logs import JobContextFilter, JsonFormatter
from bgq.stats import read_demand, read_workers
from conftest import QUEUE, StartWorker, await_until

T = TypeVar("T")
Beat = Callable[[], Awaitable[bgq.WorkerHeartbeat | None]]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_heartbeat_record_follows_idle_busy_draining(
    start_worker: StartWorker, redis_url: str, rdb: redis.Redis
) -> None:
    r = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    w = await start_worker(consumer="pod-a:42", pod_name="pod-a", concurrency=4)

    async def beat() -> bgq.WorkerHeartbeat | None:
        workers = await read_workers(r, QUEUE)
        return workers[0] if workers else None

    hb = await await_until_async(beat, 5, "a heartbeat record")
    assert (hb.consumer, hb.pod, hb.state, hb.in_flight, hb.concurrency) == (
        "pod-a:42", "pod-a", "idle", 0, 4)
    assert hb.version == bgq.__version__ and hb.oldest_started_ms == 0
    async with bgq.AsyncClient(redis_url) as client:
        job = await client.enqueue(QUEUE, "sleepy", 1.0, "hb")
        busy = await await_until_async(
            lambda: _state(beat, "busy"), 3, "the record to turn busy on the transition")
        assert busy.in_flight == 1 and busy.oldest_started_ms >= int(time.time() * 1000) - 3000
        w.worker.request_stop()
        draining = await await_until_async(lambda: _state(beat, "draining"), 3, "draining")
        assert draining.in_flight == 1
        assert w.task is not None
        assert await w.task == 0
        assert (await client.get(QUEUE, job.id)).state is bgq.JobState.SUCCEEDED
    assert await read_workers(r, QUEUE) == []
    await r.aclose()


async def _state(beat: Beat, state: str) -> bgq.WorkerHeartbeat | None:
    hb = await beat()
    return hb if hb is not None and hb.state == state else None


async def await_until_async(
    fn: Callable[[], Awaitable[T | None]], seconds: float, what: str
) -> T:
    deadline = time.monotonic() + seconds
    while True:
        value = await fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        await asyncio.sleep(0.02)


async def test_livez_readyz_metrics(start_worker: StartWorker, redis_url: str) -> None:
    port = free_port()
    w = await start_worker(http_port=port)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base) as http, bgq.AsyncClient(redis_url) as client:
        assert (await http.get("/livez")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        job = await client.enqueue(QUEUE, "echo", 1)
        await client.wait(QUEUE, job.id, timeout=10)
        text = (await http.get("/metrics")).text
        assert 'bgq_jobs_succeeded_total{queue="test/jobs"} 1.0' in text
        assert 'bgq_job_queue_wait_seconds_count{queue="test/jobs"} 1.0' in text
        # a loop that has not ticked for longer than the threshold fails liveness (the ticker
        # is held still meanwhile, so it cannot refresh the mark before the request lands)
        probes = w.worker.probes
        tick = probes.tick
        probes.tick = lambda: None  # type: ignore[method-assign]
        probes.last_tick -= 60
        live = await http.get("/livez")
        assert live.status_code == 503 and "event loop blocked" in live.text
        probes.tick = tick  # type: ignore[method-assign]
        probes.tick()
        assert (await http.get("/livez")).status_code == 200
        await client.enqueue(QUEUE, "sleepy", 1.0, "lz")  # keeps the drain going for a while
        await await_until(lambda: w.worker.running == 1, 5, "the job to start")
        w.worker.request_stop()
        await await_until(lambda: w.worker.draining, 5, "draining")
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.text == "draining\n"
        assert (await http.get("/livez")).status_code == 200  # draining is alive
        assert w.task is not None
        await w.task


async def test_logs_carry_job_and_trace_ids(start_worker: StartWorker, redis_url: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("bgq.worker")
    logger.addHandler(handler)
    try:
        await start_worker()
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        async with bgq.AsyncClient(redis_url) as client:
            job = await client.enqueue_with(QUEUE, "flaky", args=["lg", 1],
                                            headers={"traceparent": traceparent})
            assert await client.wait(QUEUE, job.id, timeout=10) == 2
    finally:
        logger.removeHandler(handler)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    retry = next(r for r in records if r["msg"] == "job failed, retrying")
    assert retry["job_id"] == job.id
    assert retry["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert retry["task"] == "flaky" and retry["attempt"] == 1
    assert "RuntimeError" in retry["error"] and retry["level"] == "WARNING"


async def test_read_demand_many_queues_one_round_trip(redis_url: str, rdb: redis.Redis) -> None:
    r = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    async with bgq.AsyncClient(redis_url) as client:
        for _ in range(3):
            await client.enqueue("a/x", "echo", 1)
        await client.enqueue_with("a/x", "echo", args=[1], priority="low")
        await client.enqueue_with("a/x", "echo", args=[1], delay=1)
        await client.enqueue_with("a/x", "echo", args=[1], delay=100)
        await client.enqueue("a/y", "echo", 1)
    await asyncio.sleep(0.05)  # let the oldest entry age a little (the quantity measured)
    from bgq.testing import fetch_jobs

    fetch_jobs(rdb, "a/x", count=2)
    now = int(time.time() * 1000)
    calls: list[int] = []
    pool: Any = r.connection_pool  # its method is replaced below: not type-checkable
    orig = pool.get_connection

    async def counting(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return await orig(*a, **k)

    pool.get_connection = counting
    demand = await read_demand(r, ["a/x", "a/y", "b/never"], now, due_window_ms=5000)
    assert len(calls) == 1
    x, y, never = demand["a/x"], demand["a/y"], demand["b/never"]
    assert (x.backlog, x.in_flight, x.delayed, x.due, x.dead) == (2, 2, 2, 1, 0)
    assert x.oldest_ready_age_ms >= 40
    assert (y.backlog, y.in_flight, y.delayed) == (1, 0, 0)
    assert never == bgq.QueueDemand()
    await r.aclose()


async def test_enqueue_publishes_wake_rate_limited(redis_url: str) -> None:
    r = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    pubsub = r.pubsub()
    await pubsub.subscribe("bgq:wake")
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    async with bgq.AsyncClient(redis_url) as client:
        for _ in range(5):
            await client.enqueue("w/q", "echo", 1)
        await client.enqueue_with("w/q", "echo", args=[1], delay=60)  # within 200 ms: none
        first = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert first is not None and first["data"] == "w/q"
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1) is None
        await asyncio.sleep(0.25)
        await client.enqueue("w/q", "echo", 1)
        again = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert again is not None and again["data"] == "w/q"
        await asyncio.sleep(0.25)
        # a delayed job wakes the operator too (it reads a queue at rest only every 30 s)
        await client.enqueue_with("w/q", "echo", args=[1], delay=60)
        delayed = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert delayed is not None and delayed["data"] == "w/q"
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    await r.aclose()
