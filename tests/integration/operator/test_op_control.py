"""The operator side of pause, limits and schedules: real redis-server, recording fake API.

spec.paused and spec.limits reach Redis (the keys the fetch script reads), a paused queue scales
to zero with boundBy paused, `bgq pause` (the cli field) pauses it as well, and the schedule
loop writes status.schedules, status.nextTick and events.
"""

from __future__ import annotations

import json
import time
from typing import cast

import redis
from tests.integration.operator.test_op_runtime import (
    NAME,
    NS,
    FakeKube,
    apply,
    eventually,
    runtime,
    spec_for,
)

from bgq.control import limits_key, paused_key, set_paused
from bgq.protocol import QueueName
from bgq_operator.autoscaler import Autoscaler
from bgq_operator.reconcile import Context
from bgq_operator.schedules import Scheduler

Q = QueueName(NS, NAME)

__all__ = ["runtime"]  # the fixture, shared with test_op_runtime.py


async def test_spec_paused_and_limits_reach_redis_and_scale_to_zero(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, kube, autoscaler = runtime
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    spec = spec_for(redis_url, minReplicas=2, pollIntervalSeconds=1)
    spec["paused"] = True
    spec["limits"] = {
        "rate": {"jobs": 10, "perSeconds": 2},
        "keys": [{"name": "tenant", "keyFrom": "kwargs.tenant", "concurrency": 3}],
    }
    await apply(ctx, spec)
    await eventually(lambda: r.exists(paused_key(Q)), 5, "the pause key")
    assert r.hkeys(paused_key(Q)) == ["spec"]
    limits = json.loads(cast(str, r.get(limits_key(Q))))
    assert limits == {
        "v": 1,
        "rate": {"jobs": 10, "per_ms": 2000.0},
        "keys": [{"name": "tenant", "from": "kwargs", "field": "tenant", "concurrency": 3}],
    }
    await eventually(lambda: kube.status.get("scaling", {}).get("boundBy") == "paused", 5, "paused")
    # minReplicas 2 does not hold a paused queue up: no pod runs a job, so zero
    assert kube.deployments["bgq-orders"]["spec"]["replicas"] == 0
    scaling = next(c for c in kube.status["conditions"] if c["type"] == "Scaling")
    assert scaling["reason"] == "QueuePaused"

    # resume in the spec: the key goes, limits stay; the queue goes back to minReplicas
    spec["paused"] = False
    del spec["limits"]
    await apply(ctx, spec)
    autoscaler.poke(ctx.registry.get(NS, NAME))
    await eventually(lambda: not r.exists(paused_key(Q)), 5, "the pause key removed")
    await eventually(lambda: not r.exists(limits_key(Q)), 5, "the limits key removed")
    await eventually(lambda: kube.deployments["bgq-orders"]["spec"]["replicas"] == 2, 5, "min 2")


async def test_cli_pause_pauses_an_operator_queue(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, kube, _ = runtime
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    await apply(ctx, spec_for(redis_url, minReplicas=1, pollIntervalSeconds=1))
    await eventually(lambda: kube.status.get("desiredReplicas") == 1, 5, "min 1")
    assert set_paused(r, Q, True, "cli")
    await eventually(lambda: kube.status.get("scaling", {}).get("boundBy") == "paused", 5, "paused")
    assert r.hkeys(paused_key(Q)) == ["cli"]  # the operator leaves the cli field alone
    assert not set_paused(r, Q, False, "cli")
    await eventually(lambda: kube.status.get("desiredReplicas") == 1, 5, "resumed")


async def test_schedule_loop_writes_status_and_events(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, kube, _ = runtime
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    spec = spec_for(redis_url)
    spec["schedules"] = [
        {"name": "minutely", "cron": "* * * * *", "task": "app.tasks.noop", "kwargs": {"x": 1}},
        {"name": "off", "cron": "@daily", "task": "app.tasks.noop", "suspend": True},
    ]
    state = await apply(ctx, spec)
    scheduler = Scheduler(ctx)
    minute = (int(time.time()) // 60 + 1) * 60
    await scheduler.tick(minute - 30.0)  # first sight: nothing fired, next tick known
    items = {s["name"]: s for s in kube.status["schedules"]}
    assert items["minutely"]["nextTick"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(minute))
    assert kube.status["nextTick"] == items["minutely"]["nextTick"]
    assert "lastJobId" not in items["minutely"]
    await scheduler.tick(minute + 0.5)  # the tick
    items = {s["name"]: s for s in kube.status["schedules"]}
    assert items["minutely"]["lastJobId"] == f"sched:minutely:{minute}"
    assert items["minutely"]["lastOutcome"] == "fired"
    assert r.hget(f"bgq:{{{NS}/{NAME}}}:job:sched:minutely:{minute}", "state") == "queued"
    assert any(reason == "ScheduleFired" and f"sched:minutely:{minute}" in text
               for _, reason, text in kube.events)  # fmt: skip
    # the same tick again (a second operator, a retry): exists, no second job, no second event
    fired = sum(1 for _, reason, _ in kube.events if reason == "ScheduleFired")
    await scheduler.tick(minute + 0.7)
    assert sum(1 for _, reason, _ in kube.events if reason == "ScheduleFired") == fired
    assert r.xlen(f"bgq:{{{NS}/{NAME}}}:ready:1") == 1
    # the record the CLI reads
    record = json.loads(cast(str, r.hget(f"bgq:{{{NS}/{NAME}}}:schedules", "minutely")))
    assert record["task"] == "app.tasks.noop" and record["lastJobId"] == f"sched:minutely:{minute}"
    assert [s.model_dump(by_alias=True, exclude_none=True) for s in state.schedules] == (
        kube.status["schedules"]
    )


async def test_a_cron_that_never_fires_is_a_condition_and_an_event(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    """What the CRD pattern cannot see (30 February, a zone that does not exist) is caught
    by the operator: Ready=False InvalidSpec naming the field, and a warning event."""
    ctx, kube, _ = runtime
    spec = spec_for(redis_url)
    spec["schedules"] = [{"name": "feb30", "cron": "0 0 30 2 *", "task": "t"}]
    await apply(ctx, spec)
    ready = next(c for c in kube.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.schedules.0" in ready["message"] and "never fires" in ready["message"]
    assert any("never fires" in text for _, _, text in kube.events)
    spec["schedules"] = [{"name": "z", "cron": "@daily", "task": "t", "timeZone": "Mars/Olympus"}]
    await apply(ctx, spec)
    ready = next(c for c in kube.status["conditions"] if c["type"] == "Ready")
    assert "Mars/Olympus" in ready["message"] and "does not exist" in ready["message"]
