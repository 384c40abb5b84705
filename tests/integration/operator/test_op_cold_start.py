"""A queue woken from rest among busy ones (issue 12: enqueue -> decision with 1,000 queues).

Real redis-server, recording fake API. A queue at rest at 0 replicas that gets a job is decided
on the cold path: at once, not after the debounce, and its scale PATCH goes before the
bookkeeping writes (status, events) and the scale changes of busy queues; the debounced tick
then decides it again from the whole burst. A busy queue whose replica count does not change
costs no PATCH and no status write per wake-up.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import pytest
import redis
from tests.integration.operator.test_op_runtime import (
    NS,
    FakeKube,
    eventually,
    runtime,
    spec_for,
)

import bgq
from bgq.protocol import WAKE_CHANNEL
from bgq_operator import autoscaler as autoscaler_module
from bgq_operator import reconcile as reconcile_module
from bgq_operator.autoscaler import Autoscaler, EndpointLoop
from bgq_operator.reconcile import Context, reconcile
from bgq_operator.state import QueueState

__all__ = ["runtime"]  # the fixture, shared with test_op_runtime.py


class Recorder:
    """One ordered log of the wake-ups, ticks and API writes that matter here."""

    def __init__(self, kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[tuple[str, str, Any]] = []
        self.watched: set[str] = set()
        self.api_free = asyncio.Event()
        """Cleared: status and event writes hang until a watched queue is woken (an API
        server busy with a storm of writes, which then goes on)."""
        self.api_free.set()
        kube_scale, kube_status, kube_event = (
            kube.scale_deployment, kube.patch_queue_status, kube.post_event,
        )  # fmt: skip
        write_s = 0.002  # every write takes a while

        async def scale(namespace: str, name: str, replicas: int) -> dict[str, Any]:
            self.log.append(("scale", name.removeprefix("bgq-"), replicas))
            await asyncio.sleep(write_s)
            return await kube_scale(namespace, name, replicas)

        async def patch_status(
            namespace: str, name: str, status: dict[str, Any]
        ) -> dict[str, Any]:
            self.log.append(("status", name, None))
            await asyncio.sleep(write_s)
            await self.api_free.wait()
            return await kube_status(namespace, name, status)

        async def event(involved: Any, type_: str, reason: str, message: str) -> None:
            self.log.append(("event", involved["name"], reason))
            await asyncio.sleep(write_s)
            await self.api_free.wait()
            await kube_event(involved, type_, reason, message)

        kube.scale_deployment = scale  # type: ignore[method-assign]
        kube.patch_queue_status = patch_status  # type: ignore[method-assign]
        kube.post_event = event  # type: ignore[method-assign]
        real_wake, real_tick = EndpointLoop._woken_by_enqueue, EndpointLoop.tick

        def woken(loop: EndpointLoop, name: str) -> None:
            if name in self.watched:
                self.log.append(("wake", name.partition("/")[2], None))
            real_wake(loop, name)
            if name in self.watched:
                self.api_free.set()

        async def tick(loop: EndpointLoop, woken: Any = None, **kw: Any) -> None:
            names = {n.partition("/")[2] for n in woken or () if n in self.watched}
            if names:
                self.log.append(("tick", ",".join(sorted(names)), bool(kw.get("cold"))))
            await real_tick(loop, woken, **kw)

        monkeypatch.setattr(EndpointLoop, "_woken_by_enqueue", woken)
        monkeypatch.setattr(EndpointLoop, "tick", tick)

    def index(self, kind: str, name: str, arg: Any = None) -> int:
        for i, (k, n, a) in enumerate(self.log):
            if k == kind and n == name and (arg is None or a == arg):
                return i
        raise AssertionError(f"no {kind} {name} {arg} in {self.log}")

    def scales(self, name: str) -> list[int]:
        return [a for k, n, a in self.log if k == "scale" and n == name]


async def add_queue(ctx: Context, name: str, url: str) -> QueueState:
    return await reconcile(
        ctx, namespace=NS, name=name, uid=f"uid-{name}", generation=1, spec=spec_for(url)
    )


async def test_a_queue_woken_from_rest_is_decided_at_once_then_from_the_whole_burst(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The debounce is long here (1 s): the scale-up from zero must not wait for it, whatever
    the busy queues' wake-ups do to the loop; the debounced tick decides the queue again and
    sees the jobs that came after the first one (they publish no wake-up of their own)."""
    monkeypatch.setattr(autoscaler_module, "DEBOUNCE_S", 1.0)
    ctx, kube, autoscaler = runtime
    rec = Recorder(kube, monkeypatch)
    busy = [f"busy{i}" for i in range(5)]
    for name in [*busy, "cold"]:
        await add_queue(ctx, name, redis_url)
    (loop,) = autoscaler.loops.values()
    cold = ctx.registry.get(NS, "cold")
    await eventually(lambda: cold.queue is not None and not loop._deciding, 5, "first reads")
    await asyncio.sleep(0.3)  # the subscription is up
    rec.watched = {f"{NS}/cold"}

    client = bgq.Client(redis_url)
    stop = asyncio.Event()

    def produce() -> None:  # the busy queues wake the loop all the time
        i = 0
        while not stop.is_set():
            client.enqueue(f"{NS}/{busy[i % len(busy)]}", "app.tasks.noop")
            i += 1

    producer = asyncio.create_task(asyncio.to_thread(produce))
    try:
        await eventually(lambda: loop._deciding or kube.scales(), 5, "busy queues deciding")
        await asyncio.to_thread(client.enqueue, f"{NS}/cold", "app.tasks.noop")
        await eventually(lambda: rec.scales("cold"), 5, "the cold queue's scale-up")
        # more jobs right after: within the 200 ms rate limit they publish no wake-up
        await asyncio.to_thread(
            client.enqueue_many, f"{NS}/cold", [bgq.JobSpec("app.tasks.noop")] * 15
        )
        await eventually(lambda: rec.scales("cold") == [1, 2], 10, "the whole burst decided")
    finally:
        stop.set()
        await producer
        client.close()
    wake, first = rec.index("wake", "cold"), rec.index("scale", "cold", 1)
    cold_tick = rec.index("tick", "cold", True)
    debounced = rec.index("tick", "cold", False)
    assert wake < cold_tick < first < debounced, rec.log
    assert ctx.write_gate.urgent == 0, "every hold let go once its PATCH was sent"
    await eventually(lambda: kube.deployments["bgq-cold"]["spec"]["replicas"] == 2, 5, "2")


async def test_a_scale_from_zero_goes_before_busy_queues_writes(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """40 busy queues scale 1 -> 2 at once (scale PATCH, ScaledUp event, status each: a storm
    of writes, more than the slots for them); a queue woken from rest meanwhile has its scale
    PATCH sent before any other write starts (the writes in flight end just as it wakes), and
    the storm goes on after it."""
    ctx, kube, autoscaler = runtime
    busy = [f"busy{i:02d}" for i in range(40)]
    for name in [*busy, "cold"]:
        await add_queue(ctx, name, redis_url)
    (loop,) = autoscaler.loops.values()
    client = bgq.Client(redis_url)
    for name in busy:  # one replica each, settled
        await asyncio.to_thread(client.enqueue, f"{NS}/{name}", "app.tasks.noop")
    await eventually(lambda: len(kube.scales()) == len(busy) and not loop._deciding, 10, "1 each")
    rec = Recorder(kube, monkeypatch)
    rec.watched = {f"{NS}/cold"}
    rec.api_free.clear()
    r = redis.Redis.from_url(redis_url)
    pipe = r.pipeline(transaction=False)
    for name in busy:  # 11 more jobs each, and one wake-up each: 1 -> 2 replicas
        await asyncio.to_thread(
            client.enqueue_many, f"{NS}/{name}", [bgq.JobSpec("app.tasks.noop")] * 11
        )
        pipe.publish(WAKE_CHANNEL, f"{NS}/{name}")
    pipe.execute()
    slots = reconcile_module.STATUS_WRITE_CONCURRENCY
    await eventually(lambda: sum(k != "scale" for k, _, _ in rec.log) >= slots, 10, "a storm")
    await asyncio.to_thread(client.enqueue, f"{NS}/cold", "app.tasks.noop")
    await eventually(lambda: rec.scales("cold"), 10, "the cold queue's scale-up")
    await eventually(lambda: not loop._deciding, 20, "the storm written")
    client.close()
    r.close()
    wake, first = rec.index("wake", "cold"), rec.index("scale", "cold", 1)
    between = rec.log[wake + 1 : first]
    assert all(n == "cold" for _, n, _ in between), between  # nobody else's write started
    after = [(k, n) for k, n, _ in rec.log[first + 1 :] if n != "cold"]
    assert after, "the storm was still being written when the cold queue woke"
    assert sorted(set(rec.scales("busy00") + rec.scales("busy39"))) == [2]
    assert ctx.write_gate.urgent == 0


async def test_a_stopped_loop_holds_no_write_back(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    """The gate is shared by every endpoint's loop: one retired while a decision from rest was
    pending must not hold the others' status writes back."""
    ctx, _, autoscaler = runtime
    await add_queue(ctx, "gone", redis_url)
    (loop,) = autoscaler.loops.values()
    loop._hold(f"{NS}/gone")  # a decision from rest, cut short by the stop
    assert ctx.write_gate.urgent == 1
    await loop.stop()
    assert ctx.write_gate.urgent == 0


async def test_a_busy_queue_whose_replicas_stay_costs_no_write_per_wake_up(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    ctx, kube, autoscaler = runtime
    state = await add_queue(ctx, "steady", redis_url)
    (loop,) = autoscaler.loops.values()
    writes: list[str] = []
    real_status = kube.patch_queue_status

    async def patch_status(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        writes.append(name)
        return await real_status(namespace, name, status)

    kube.patch_queue_status = patch_status  # type: ignore[method-assign]
    client = bgq.Client(redis_url)
    await asyncio.to_thread(client.enqueue, f"{NS}/steady", "t")  # 9 jobs in all: 1 replica
    await eventually(lambda: kube.scales() == [1] and not loop._deciding, 5, "one replica")
    await eventually(lambda: state.desired == 1 and writes, 5, "its status")
    decided: list[int] = []
    real_apply = EndpointLoop._apply

    async def counting(self: EndpointLoop, *args: Any) -> None:
        await real_apply(self, *args)
        decided.append(1)

    monkeypatch.setattr(EndpointLoop, "_apply", counting)
    try:
        settled = len(writes)
        r = redis.Redis.from_url(redis_url)
        for i in range(8):  # a job and a wake-up each time: the backlog moves, the need not
            await asyncio.to_thread(client.enqueue, f"{NS}/steady", "t")
            r.publish(WAKE_CHANNEL, f"{NS}/steady")
            await eventually(partial(lambda n: len(decided) > n, i), 5, f"decision {i + 1}")
        r.close()
    finally:
        client.close()
    assert kube.scales() == [1], "no PATCH when the replica count stays"
    assert len(writes) == settled, "the moving figures alone are not written per wake-up"


async def test_a_burst_sent_job_by_job_still_gets_all_its_pods_in_one_step(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    """The cold path decides once the queue's figures settle (two equal reads 10 ms apart), so
    25 jobs enqueued one by one (one wake-up: the rest fall in the publish's 200 ms rate limit)
    scale 0 -> 3 in one step (10 jobs per pod), never 0 -> 1 -> 3; and the regular tick, which
    may run meanwhile, leaves the queue to the cold path."""
    ctx, kube, autoscaler = runtime
    await add_queue(ctx, "burst", redis_url)
    (loop,) = autoscaler.loops.values()
    state = ctx.registry.get(NS, "burst")
    await eventually(lambda: state.queue is not None and not loop._deciding, 5, "first read")
    probe = redis.Redis.from_url(redis_url)
    await eventually(lambda: dict(probe.pubsub_numsub(WAKE_CHANNEL)).get(WAKE_CHANNEL.encode()),
                     5, "the wake-up subscription")
    probe.close()

    def one_by_one() -> None:
        with bgq.Client(redis_url) as client:
            for _ in range(25):
                client.enqueue(f"{NS}/burst", "app.tasks.noop")

    await asyncio.to_thread(one_by_one)
    await eventually(kube.scales, 5, "the scale-up from zero")
    await eventually(lambda: not loop._deciding and not loop.woken, 5, "every decision applied")
    assert kube.scales() == [3], kube.scales()
    assert ctx.write_gate.urgent == 0
