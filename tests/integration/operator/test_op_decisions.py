"""The autoscaler's decision log for the web console (bgq.decisions, docs/protocol.md 8): real
redis-server, the real reconcile + autoscaler, a recording fake API.

A decision that changes is recorded at once (demand, desired, replicas, Ready, boundBy, reason)
and the queue is listed in ``bgq:queues``; an unchanged idle queue is sampled sparsely (not on
every tick); the stream is capped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
from tests.integration.operator.test_op_runtime import (
    NAME,
    NS,
    QUEUE,
    FakeKube,
    apply,
    eventually,
    runtime,
    spec_for,
)

import bgq
from bgq import decisions
from bgq.protocol import QueueName
from bgq_operator.autoscaler import Autoscaler, record_decisions
from bgq_operator.reconcile import Context
from bgq_operator.spec import QueueStatus

Q = QueueName(NS, NAME)

__all__ = ["runtime"]  # the fixture, shared with test_op_runtime.py


def records(r: redis.Redis) -> list[decisions.DecisionRecord]:
    entries: Any = r.xrange(decisions.decisions_key(Q))
    return [decisions.DecisionRecord.from_fields(f) for _, f in entries]


async def test_decisions_are_recorded_for_the_console_and_idle_queues_sparsely(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, _, autoscaler = runtime
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    state = await apply(ctx, spec_for(redis_url, pollIntervalSeconds=1))
    first = await eventually(lambda: records(r), 5, "the first decision record")
    assert first[0].desired == 0 and first[0].replicas == 0 and first[0].idle
    assert first[0].condition == "True" and first[0].bound_by
    assert r.zscore(decisions.QUEUES_INDEX, QUEUE) == first[0].ms

    # idle and unchanged: ticks every second, but no new record within IDLE_SAMPLE_S
    await asyncio.sleep(2.5)
    assert len(records(r)) == 1

    client = bgq.Client(redis_url)
    try:
        await asyncio.to_thread(client.enqueue_many, QUEUE, [bgq.JobSpec("app.tasks.noop")] * 25)
    finally:
        client.close()
    await eventually(lambda: any(x.desired == 3 for x in records(r)), 5, "the scale-up record")
    up = next(x for x in records(r) if x.desired == 3)
    assert (up.demand, up.backlog, up.bound_by) == (25.0, 25, "demand")
    assert "25" in up.reason
    assert up.replicas == 3  # the fake API applied the scale at once
    assert state.deployment is not None

    # the autoscaler's own loop keeps the last sample per queue; a Redis failure is skipped
    assert autoscaler.loops and QUEUE in next(iter(autoscaler.loops.values())).sampled
    r.close()


async def test_record_decisions_is_one_capped_pipeline_and_skips_unreachable_queues(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, _, _ = runtime
    state = await apply(ctx, spec_for(redis_url))
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    client = ctx.redis.client(state.endpoint)  # type: ignore[arg-type]
    sampled: dict[str, tuple[float, tuple[Any, ...]]] = {}
    now = time.time()
    # changed figures every call: each is written; MAXLEN ~ keeps the stream near the cap
    for i in range(decisions.MAXLEN + 400):
        state.queue = QueueStatus(backlog=i)
        await record_decisions(client, [state], sampled, now + i)
    length = r.xlen(decisions.decisions_key(Q))
    assert decisions.MAXLEN <= length < decisions.MAXLEN + 200
    # unchanged: nothing until the sample is due
    assert await record_decisions(client, [state], sampled, now + decisions.MAXLEN + 400) == 0
    later = now + decisions.MAXLEN + 400 + decisions.BUSY_SAMPLE_S
    assert await record_decisions(client, [state], sampled, later) == 1
    # a queue whose Redis read failed this tick is not recorded
    state.redis_error = "cannot reach Redis"
    state.queue = QueueStatus(backlog=-1)
    assert await record_decisions(client, [state], sampled, later + 100) == 0
    r.close()


async def test_record_decisions_on_a_redis_cluster(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str, redis_cluster: Any
) -> None:
    """``P:decisions`` (the queue's slot) and ``bgq:queues`` (another slot) in one pipeline:
    a cluster pipeline sends each to its node."""
    from bgq.connection import async_client

    ctx, _, _ = runtime
    state = await apply(ctx, spec_for(redis_url))
    state.queue = QueueStatus(backlog=4)
    client = async_client(redis_cluster.settings())
    try:
        assert await record_decisions(client, [state], {}, time.time()) == 1
        entries: Any = await client.xrange(decisions.decisions_key(Q))
        assert decisions.DecisionRecord.from_fields(entries[0][1]).backlog == 4
        assert await client.zscore(decisions.QUEUES_INDEX, QUEUE) is not None
    finally:
        await client.aclose()
