"""Per-key concurrency bounds the replicas, on a real redis-server with the real fetch script.

parked.lua is checked against what fetch.lua really parked (no hand-written park lists), then
the autoscaler runtime (real Redis, recording fake of the Kubernetes API, as in
test_op_runtime.py) decides from it: status.scaling.boundBy concurrency-limit with the figures
in status.scaling.limit and a LimitBound event.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

import pytest
import redis
from tests.integration.operator.test_op_runtime import (
    QUEUE,
    FakeKube,
    apply,
    eventually,
    runtime,
)

import bgq
from bgq.protocol import WAKE_CHANNEL, QueueName
from bgq.scripts import SCRIPTS
from bgq_operator import queuekeys
from bgq_operator.autoscaler import Autoscaler, EndpointLoop
from bgq_operator.queuekeys import ParkedSummary
from bgq_operator.reconcile import Context
from bgq_operator.spec import parse_spec

__all__ = ["runtime"]  # the fixture, shared with test_op_runtime.py

Q = QueueName.parse(QUEUE)
K = Q.keys
T0 = 1_900_000_000_000  # a fixed "now" in ms for the direct fetch calls
TENANT = {"name": "tenant", "keyFrom": "kwargs.tenant", "concurrency": 2}


def spec_with(url: str, keys: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "redis": {"url": url},
        "worker": {"image": "img:1", "tasksModule": "app.tasks", "concurrency": 1},
        "scaling": {"minReplicas": 0, "maxReplicas": 20, "pollIntervalSeconds": 1},
        "limits": {"keys": keys},
        **extra,
    }


def fetch(r: redis.Redis, want: int, now: int, consumer: str = "w1") -> list[dict[str, Any]]:
    args = [K.prefix, consumer, want, now, 30_000, 5, 86_400_000, 86_400_000]
    reply = cast(list[Any], SCRIPTS.fetch.run(r, [K.ready[1]], args))
    flat = json.loads(reply[2])
    return [
        {"id": flat[i], "band": flat[i + 1], "entry": flat[i + 2], "token": flat[i + 3]}
        for i in range(0, len(flat), 6)
    ]


def settle_ok(r: redis.Redis, job: dict[str, Any], now: int) -> None:
    rec = ["ok", job["id"], job["band"], job["entry"], job["token"], "null", "", ""]
    SCRIPTS.settle.run(r, [K.ready[1]], [K.prefix, now, 86_400_000, 86_400_000, json.dumps([rec])])


async def summary_of(url: str, spec: dict[str, Any]) -> queuekeys.Control:
    client = bgq.AsyncClient(url)
    try:
        control = await queuekeys.sync(client.redis, [(Q, parse_spec(spec))])
    finally:
        await client.close()
    return control[QUEUE]


def enqueue(client: bgq.Client, tenant: str | None, n: int, prefix: str) -> None:
    kwargs = {"tenant": tenant} if tenant is not None else {}
    client.enqueue_many(
        Q, [bgq.JobSpec("t", kwargs=kwargs, job_id=f"{prefix}{i}") for i in range(n)]
    )


async def test_parked_script_counts_what_fetch_parked(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    spec = spec_with(redis_url, [TENANT])
    await summary_of(redis_url, spec)  # writes P:limits from the spec, as every tick does
    with bgq.Client(redis_url) as client:
        enqueue(client, "hot", 30, "h")
        enqueue(client, "cold", 3, "c")
        enqueue(client, None, 1, "n")  # no tenant: the documented _default key
    got = fetch(r, 100, T0)
    assert sorted(j["id"] for j in got) == ["c0", "c1", "h0", "h1", "n0"]
    ctl = await summary_of(redis_url, spec)
    # hot: 28 parked, 2 running (no free slot); cold: 1 parked, 2 running (no free slot)
    assert ctl.summary == ParkedSummary(lists=2, jobs=29, free=0, unbounded=0, truncated=False)
    assert ctl.parked == 29  # pending under ~parked, the figure the autoscaler moves to backlog
    assert queuekeys.startable(ctl.summary, unread=0, due=0) == 0

    # a hot job finishes: one slot is free for the parked hot jobs (no fetch has run yet)
    settle_ok(r, next(j for j in got if j["id"] == "h0"), T0 + 10)
    ctl = await summary_of(redis_url, spec)
    assert ctl.summary == ParkedSummary(2, 29, 1, 0, False)
    # the next fetch takes that slot: parked 28, free 0 again
    assert [j["id"] for j in fetch(r, 100, T0 + 300)] == ["h2"]
    ctl = await summary_of(redis_url, spec)
    assert ctl.summary == ParkedSummary(2, 28, 0, 0, False)


async def test_rate_only_keys_and_two_keys_are_classified(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    keys: list[dict[str, Any]] = [
        TENANT,
        {"name": "api", "keyFrom": "header.x-api", "rate": {"jobs": 1, "perSeconds": 60}},
    ]
    spec = spec_with(redis_url, keys)
    await summary_of(redis_url, spec)
    with bgq.Client(redis_url) as client:
        client.enqueue_many(Q, [
            bgq.JobSpec("t", kwargs={"tenant": "a"}, headers={"x-api": "k1"}, job_id=f"a{i}")
            for i in range(4)
        ])  # fmt: skip
    # a0 starts (tenant a: 1 of 2, api k1: its one token); a1..a3 wait behind api's rate
    assert [j["id"] for j in fetch(r, 100, T0)] == ["a0"]
    ctl = await summary_of(redis_url, spec)
    # the list's keys are tenant=a (1 free slot) and api=k1 (rate only): the free slot bounds it
    assert ctl.summary == ParkedSummary(1, 3, 1, 0, False)

    rate_only = spec_with(redis_url, keys[1:])
    await summary_of(redis_url, rate_only)
    with bgq.Client(redis_url) as client:
        client.enqueue_many(Q, [
            bgq.JobSpec("t", headers={"x-api": "k2"}, job_id=f"b{i}") for i in range(3)
        ])  # fmt: skip
    assert [j["id"] for j in fetch(r, 100, T0 + 1)] == ["b0"]
    ctl = await summary_of(redis_url, rate_only)
    # old list (written under two keys) and the new rate-only list: no concurrency bound
    assert ctl.summary == ParkedSummary(2, 5, 0, 5, False)


async def test_hot_key_bounds_replicas_with_figures_and_event(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, kube, autoscaler = runtime
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    spec = spec_with(redis_url, [TENANT])
    spec["scaling"]["scaleDownDelaySeconds"] = 0
    state = await apply(ctx, spec)
    await eventually(lambda: kube.status.get("scaling", {}).get("boundBy"), 5, "first decision")
    with bgq.Client(redis_url) as client:
        enqueue(client, "hot", 40, "h")
    # unread entries: their keys are unknown, so the autoscaler may scale for all of them
    await eventually(lambda: kube.scales() and kube.scales()[0] == 20, 5, "scale-up to max")
    got = fetch(r, 100, int(time.time() * 1000))  # a worker reads them all: 2 run, 38 parked
    assert len(got) == 2
    autoscaler.poke(state)

    def capped() -> dict[str, Any] | None:
        scaling = kube.status.get("scaling", {})
        return scaling if scaling.get("boundBy") == "concurrency-limit" else None

    scaling = await eventually(capped, 5, "boundBy concurrency-limit")
    assert scaling["limit"] == {
        "running": 2, "startable": 0, "concurrencyCap": 2, "jobsPerPod": 1, "headroom": 0,
    }  # fmt: skip
    assert "per-key concurrency limits" in scaling["reason"]
    assert scaling["demand"] == 40  # 38 parked (waiting) + 2 running
    bound = [m for _, reason, m in kube.events if reason == "LimitBound"]
    assert len(bound) == 1 and "per-key concurrency limits" in bound[0]
    assert "concurrencyCap=2" in bound[0]
    await eventually(lambda: kube.scales() == [20, 2], 5, "the scale-down to the cap")
    assert kube.status["desiredReplicas"] == 2


async def test_queue_without_key_limits_reads_no_summary(redis_url: str) -> None:
    spec = {
        "redis": {"url": redis_url},
        "worker": {"image": "img:1", "tasksModule": "app.tasks"},
        "limits": {"rate": {"jobs": 5}},
    }
    ctl = await summary_of(redis_url, spec)
    assert ctl.summary is None and ctl.parked == 0


async def test_many_free_keys_stop_the_count_early(redis_url: str) -> None:
    """More startable jobs than maxReplicas x jobsPerPod: no cap is possible, stop counting."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    spec = spec_with(redis_url, [TENANT])
    spec["scaling"]["maxReplicas"] = 3  # 1 job per pod: 3 startable jobs are enough
    await summary_of(redis_url, spec)
    with bgq.Client(redis_url) as client:
        for t in range(6):
            enqueue(client, f"t{t}", 3, f"t{t}-")
    assert len(fetch(r, 100, T0)) == 12  # 2 per tenant run, 1 per tenant parked
    # settle one job of every tenant: each list has a free slot now
    ctl = await summary_of(redis_url, spec)
    assert ctl.summary == ParkedSummary(6, 6, 0, 0, False)
    for job_id in [f"t{t}-0" for t in range(6)]:
        raw = r.hmget(K.job(job_id), "band", "entry", "token")
        settle_ok(r, {"id": job_id, "band": int(raw[0] or 1), "entry": raw[1],
                      "token": int(raw[2] or 0)}, T0 + 5)  # fmt: skip
    ctl = await summary_of(redis_url, spec)
    assert ctl.summary is not None and ctl.summary.truncated
    assert ctl.summary.free == 3 and ctl.summary.lists == 3  # stopped after 3 free slots
    assert queuekeys.startable(ctl.summary, 0, 0) is None
    spec["scaling"]["maxReplicas"] = 20
    ctl = await summary_of(redis_url, spec)
    assert ctl.summary == ParkedSummary(6, 6, 6, 0, False)


async def test_a_wake_up_on_a_poll_tick_decides_a_queue_at_rest(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wake-up that lands on a full (poll) tick, which skips queues at rest (IDLE_POLL_S),
    must still decide the woken queue at once. Polls every 0.1 s make every tick full."""
    monkeypatch.setattr(EndpointLoop, "_poll_interval", lambda self: 0.1)
    ctx, kube, _ = runtime
    spec = spec_with(redis_url, [TENANT])
    await apply(ctx, spec)
    client = bgq.Client(redis_url)

    def subscribed() -> bool:
        counts = client.redis.pubsub_numsub(WAKE_CHANNEL)
        return bool(counts and int(counts[0][1]) > 0)

    await eventually(subscribed, 10.0, "the operator to subscribe to wake-ups")
    await eventually(lambda: kube.status.get("desiredReplicas") == 0, 5, "the queue at rest")
    await asyncio.sleep(2.5)  # a few 1 s polls that skip the queue at rest
    started = time.monotonic()
    client.enqueue_with(Q, "t", kwargs={"tenant": "a"})
    client.close()
    await eventually(kube.scales, 5.0, "the woken queue's decision")
    latency = time.monotonic() - started
    assert kube.scales() == [1]
    assert latency < 2.0, f"enqueue -> decision took {latency:.2f}s (IDLE_POLL_S is 30 s)"
