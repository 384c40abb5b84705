"""Reconcile + autoscaler runtime against a real redis-server, with a recording fake API.

The fake stands in for the Kubernetes API only (the real one is exercised in
tests/e2e/test_operator.py); Redis, the wake-up channel, the demand script and the decision are
real. Covers: the wake path (enqueue -> decision without polling), one-step scale-up, pause,
manual replicas, Redis outage and recovery, deletion cost before a scale-down, drift repair.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

import bgq
from bgq_operator import conditions as cond
from bgq_operator.autoscaler import Autoscaler
from bgq_operator.kube import ConflictError
from bgq_operator.reconcile import APPLY_ATTEMPTS, Context, reconcile
from bgq_operator.state import DeploymentView, QueueState

NS, NAME = "shop", "orders"
QUEUE = f"{NS}/{NAME}"


class FakeKube:
    """Records the operator's API calls; stores Deployments, pods, status and events."""

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.secrets: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []
        self.calls: list[tuple[float, str, Any]] = []
        self.conflicts = 0  # replaces that fail with 409 after someone else scales the Deployment

    def _rec(self, what: str, arg: Any) -> None:
        self.calls.append((time.monotonic(), what, arg))

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.deployments.get(name)
        return copy.deepcopy(found) if found else None

    async def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        body["metadata"].update(generation=1, resourceVersion="1")
        self.deployments[body["metadata"]["name"]] = body
        self._rec("create", body["spec"]["replicas"])
        return copy.deepcopy(body)

    async def replace_deployment(
        self, namespace: str, body: dict[str, Any], dry_run: bool = False
    ) -> dict[str, Any]:
        live = self.deployments[body["metadata"]["name"]]
        if self.conflicts:
            self.conflicts -= 1
            live["spec"]["replicas"] += 1  # the write that raced the operator's read
            self._rec("conflict", None)
            raise ConflictError("replace Deployment", 409, "the object has been modified")
        new = copy.deepcopy(body)
        changed = new["spec"] != live["spec"]
        new["metadata"]["generation"] = live["metadata"]["generation"] + int(changed)
        if not dry_run:
            self.deployments[new["metadata"]["name"]] = new
            self._rec("replace", None)
        return copy.deepcopy(new)

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        dep = self.deployments[name]
        dep["spec"]["replicas"] = replicas
        dep["metadata"]["generation"] += 1
        self._rec("scale", replicas)
        return copy.deepcopy(dep)

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pods)

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, Any]) -> None:
        for pod in self.pods:
            if pod["metadata"]["name"] == name:
                pod["metadata"].setdefault("annotations", {}).update(annotations)
        self._rec("annotate", (name, dict(annotations)))

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get(name)

    async def patch_queue_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.status = copy.deepcopy(status)
        return {}

    async def post_event(self, involved: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def scales(self) -> list[int]:
        return [arg for _, what, arg in self.calls if what == "scale"]


def spec_for(url: str, **scaling: Any) -> dict[str, Any]:
    return {
        "redis": {"url": url},
        "worker": {"image": "img:1", "tasksModule": "app.tasks", "concurrency": 10},
        "scaling": {"minReplicas": 0, "maxReplicas": 5, "pollIntervalSeconds": 30, **scaling},
    }


async def eventually(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def runtime() -> AsyncIterator[tuple[Context, FakeKube, Autoscaler]]:
    kube = FakeKube()
    ctx = Context(kube=kube)  # type: ignore[arg-type]
    autoscaler = Autoscaler(ctx)
    ctx.on_change = autoscaler.refresh
    yield ctx, kube, autoscaler
    await autoscaler.stop()
    await ctx.redis.close()


async def apply(ctx: Context, spec: dict[str, Any], **annotations: str) -> QueueState:
    return await reconcile(
        ctx, namespace=NS, name=NAME, uid="uid-1", generation=1, spec=spec,
        annotations=annotations,
    )  # fmt: skip


async def test_wake_up_scales_from_zero_in_one_step_without_polling(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, kube, _ = runtime
    state = await apply(ctx, spec_for(redis_url))
    assert kube.calls[0][1:] == ("create", 0)
    assert cond.is_true(kube.status["conditions"], cond.READY)
    assert cond.is_true(kube.status["conditions"], cond.REDIS_REACHABLE)
    await asyncio.sleep(0.3)  # the subscription is up; the poll interval is 30 s

    client = bgq.Client(redis_url)
    started = time.monotonic()
    # one pipelined burst (the debounce sees it whole even on a loaded machine)
    await asyncio.to_thread(client.enqueue_many, QUEUE, [bgq.JobSpec("app.tasks.noop")] * 25)
    await eventually(kube.scales, 2.0, "a scale decision")
    latency = kube.calls[-1][0] - started
    client.close()
    assert kube.scales() == [3], "ceil(25 / 10) = 3, in one step"
    assert latency < 1.0, f"enqueue -> decision took {latency:.3f}s"
    print(f"enqueue of 25 jobs -> scale decision applied: {latency * 1000:.0f} ms")
    await eventually(lambda: kube.status.get("desiredReplicas") == 3, 2, "status")
    assert kube.status["queue"]["backlog"] == 25
    assert kube.status["scaling"]["boundBy"] == "demand"
    assert kube.status["scaling"]["lastScaleTime"]
    assert any(reason == "ScaledUp" for _, reason, _ in kube.events)
    # Ready went True/ScaledToZero -> False/WorkersStarting: the normal way out of rest, which
    # the ScaledUp event tells; no Warning per wake-up
    assert cond.find(kube.status["conditions"], cond.READY)["reason"] == "WorkersStarting"  # type: ignore[index]
    assert not [e for e in kube.events if e[0] == "Warning"], kube.events
    assert state.deployment is not None and state.deployment.replicas == 3


async def test_pause_freezes_and_manual_mode_follows_spec_replicas(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, kube, autoscaler = runtime
    state = await apply(ctx, spec_for(redis_url), **{"bgq.dev/autoscaler-paused": "true"})
    client = bgq.Client(redis_url)
    await asyncio.to_thread(lambda: [client.enqueue(QUEUE, "app.tasks.noop") for _ in range(5)])
    client.close()
    await eventually(
        lambda: kube.status.get("scaling", {}).get("boundBy") == "autoscaler-paused", 3, "paused"
    )
    assert kube.scales() == []
    assert cond.find(kube.status["conditions"], cond.SCALING)["reason"] == "AutoscalerPaused"  # type: ignore[index]

    manual = spec_for(redis_url, enabled=False)
    manual["replicas"] = 2
    await apply(ctx, manual)
    autoscaler.poke(state)
    await eventually(lambda: kube.scales() == [2], 3, "replicas = spec.replicas")
    assert kube.status["scaling"]["boundBy"] == "manual"


async def test_redis_outage_keeps_replicas_and_recovers(
    runtime: tuple[Context, FakeKube, Autoscaler], persistent_redis: Any
) -> None:
    ctx, kube, _ = runtime
    state = await apply(ctx, spec_for(persistent_redis.url, minReplicas=1, pollIntervalSeconds=1))
    await eventually(lambda: kube.scales() == [] and kube.status.get("desiredReplicas"), 3, "tick")
    assert kube.calls[0][1:] == ("create", 1)

    persistent_redis.stop()
    await eventually(
        lambda: not cond.is_true(kube.status.get("conditions"), cond.REDIS_REACHABLE), 10,
        "RedisReachable=False",
    )  # fmt: skip
    assert kube.status["scaling"]["boundBy"] == "redis-unavailable"
    assert not cond.is_true(kube.status["conditions"], cond.READY)
    assert any(reason == "RedisUnreachable" for _, reason, _ in kube.events)
    assert kube.scales() == [], "Keep: replicas untouched"

    persistent_redis.start()
    await eventually(
        lambda: cond.is_true(kube.status.get("conditions"), cond.REDIS_REACHABLE), 10,
        "RedisReachable=True again",
    )  # fmt: skip
    assert any(reason == "RedisReachable" for _, reason, _ in kube.events)
    assert state.redis_error is None


def _pod(name: str, age_s: float) -> dict[str, Any]:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age_s))
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def _heartbeat(r: redis.Redis, pod: str, state: str, in_flight: int) -> None:
    prefix = f"bgq:{{{QUEUE}}}"
    now = int(time.time() * 1000)
    consumer = f"{pod}:1"
    r.zadd(f"{prefix}:workers", {consumer: now})
    r.hset(f"{prefix}:worker:{consumer}", mapping={
        "pod": pod, "pid": 1, "state": state, "in_flight": in_flight,
        "oldest_started_ms": now - 60_000 if in_flight else 0, "heartbeat_ms": now,
        "concurrency": 10, "version": "test",
    })  # fmt: skip


async def test_scale_down_writes_deletion_cost_first_and_keeps_the_busy_pod(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, kube, _ = runtime
    spec = spec_for(redis_url, minReplicas=3, scaleDownDelaySeconds=0, idleSecondsBeforeZero=3600,
                    pollIntervalSeconds=1)  # fmt: skip
    await apply(ctx, spec)
    kube.pods = [_pod("w-busy", 300), _pod("w-idle-1", 200), _pod("w-idle-2", 100)]
    r = redis.Redis.from_url(redis_url)
    _heartbeat(r, "w-busy", "busy", 1)
    _heartbeat(r, "w-idle-1", "idle", 0)
    _heartbeat(r, "w-idle-2", "idle", 0)
    r.close()

    spec["scaling"]["minReplicas"] = 0  # demand 0: down to one pod (idle-before-zero), the busy one
    await apply(ctx, spec)
    await eventually(kube.scales, 5, "a scale-down")
    assert kube.scales() == [1]
    order = [what for _, what, _ in kube.calls if what in ("annotate", "scale")]
    assert order.index("scale") > max(i for i, w in enumerate(order) if w == "annotate")
    costs = {
        p["metadata"]["name"]: int(p["metadata"]["annotations"][
            "controller.kubernetes.io/pod-deletion-cost"])
        for p in kube.pods
    }  # fmt: skip
    assert costs["w-idle-1"] < 0 and costs["w-idle-2"] < 0
    assert costs["w-busy"] >= 1000
    assert any(reason == "ScaledDown" for _, reason, _ in kube.events)


def seen_by_watch(ctx: Context, dep: dict[str, Any]) -> None:
    """Someone else's edit as the API server and the operator's watch see it: the spec change
    bumps the generation, and the Deployment event hands the new view to the queue's state."""
    dep["metadata"]["generation"] += 1
    state = ctx.registry.get(NS, NAME)
    state.deployment = DeploymentView.from_body(dep)


async def test_drift_is_put_back_without_touching_replicas(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, kube, _ = runtime
    spec = spec_for(redis_url)
    await apply(ctx, spec)
    dep = kube.deployments["bgq-orders"]
    dep["spec"]["replicas"] = 4  # the autoscaler's business
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"  # drift
    seen_by_watch(ctx, dep)
    await apply(ctx, spec)
    fixed = kube.deployments["bgq-orders"]
    assert fixed["spec"]["template"]["spec"]["containers"][0]["image"] == "img:1"
    assert fixed["spec"]["replicas"] == 4
    assert any(reason == "DeploymentUpdated" for _, reason, _ in kube.events)
    calls = len(kube.calls)
    await apply(ctx, spec)
    assert len(kube.calls) == calls, "a no-op apply (a resync of an unchanged queue): no call"


async def test_drift_repair_rereads_after_a_conflict_and_keeps_the_raced_replicas(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, kube, _ = runtime
    spec = spec_for(redis_url)
    await apply(ctx, spec)
    before = kube.deployments["bgq-orders"]["spec"]["replicas"]
    kube.deployments["bgq-orders"]["spec"]["template"]["spec"]["containers"][0]["image"] = "x:1"
    seen_by_watch(ctx, kube.deployments["bgq-orders"])
    kube.conflicts = APPLY_ATTEMPTS - 1  # every round but the last loses the race
    await apply(ctx, spec)
    fixed = kube.deployments["bgq-orders"]
    assert fixed["spec"]["template"]["spec"]["containers"][0]["image"] == "img:1"
    assert fixed["spec"]["replicas"] == before + APPLY_ATTEMPTS - 1, "raced writes are kept"
    assert sum(1 for _, what, _ in kube.calls if what == "conflict") == APPLY_ATTEMPTS - 1

    kube.deployments["bgq-orders"]["spec"]["template"]["spec"]["containers"][0]["image"] = "x:2"
    seen_by_watch(ctx, kube.deployments["bgq-orders"])
    kube.conflicts = APPLY_ATTEMPTS  # never wins: the caller (kopf) retries later
    with pytest.raises(ConflictError):
        await apply(ctx, spec)


async def test_invalid_spec_and_missing_secret_become_conditions(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    ctx, kube, _ = runtime
    bad = spec_for(redis_url)
    del bad["worker"]["image"]
    await apply(ctx, bad)
    ready = cond.find(kube.status["conditions"], cond.READY)
    assert ready is not None and ready["reason"] == "InvalidSpec"
    assert "spec.worker.image" in ready["message"]
    assert not kube.deployments

    secretive = spec_for(redis_url)
    secretive["redis"] = {"urlSecretRef": {"name": "redis-cred", "key": "url"}}
    await apply(ctx, secretive)
    ready = cond.find(kube.status["conditions"], cond.READY)
    assert ready is not None and ready["reason"] == "SecretMissing"
    assert "redis-cred" in ready["message"]
    assert any(t == "Warning" and reason == "NotReady" for t, reason, _ in kube.events)


async def test_a_deployment_of_the_same_name_that_is_not_ours_is_left_alone(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    """A queue named like someone else's Deployment (e.g. ``operator`` next to the Helm
    release's ``bgq-operator``) gets a problem, and that Deployment is never replaced."""
    ctx, kube, _ = runtime
    foreign = {
        "metadata": {
            "name": "bgq-orders", "namespace": NS, "generation": 3, "resourceVersion": "7",
            "ownerReferences": [{"kind": "ReplicaSet", "name": "app", "uid": "someone-else"}],
        },
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"image": "app:9"}]}}},
    }  # fmt: skip
    kube.deployments["bgq-orders"] = copy.deepcopy(foreign)
    state = await apply(ctx, spec_for(redis_url))
    ready = cond.find(kube.status["conditions"], cond.READY)
    assert ready is not None and ready["status"] == "False"
    assert ready["reason"] == "DeploymentNotOwned"
    assert "ReplicaSet/app" in ready["message"] and "bgq-orders" in ready["message"]
    assert kube.deployments["bgq-orders"] == foreign
    assert not [what for _, what, _ in kube.calls if what in ("replace", "scale", "create")]
    assert state.deployment is None  # the autoscaler has nothing to scale
    assert any(t == "Warning" and r == "NotReady" for t, r, _ in kube.events)

    del kube.deployments["bgq-orders"]  # gone: the next reconcile creates the queue's own
    await apply(ctx, spec_for(redis_url))
    owners = kube.deployments["bgq-orders"]["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == ["uid-1"]
    ready = cond.find(kube.status["conditions"], cond.READY)
    assert ready is not None and ready["reason"] != "DeploymentNotOwned"


async def test_a_wake_up_decides_only_its_queue_and_polls_keep_their_cadence(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Per-tick work grows with the queues that changed: a wake reads one queue of many."""
    from bgq_operator import autoscaler as autoscaler_module

    ctx, kube, autoscaler = runtime
    reads: list[list[str]] = []
    real_read = getattr(autoscaler_module, "read_demand")  # noqa: B009 - patched below

    async def recording_read(client: Any, names: list[str], *args: Any) -> Any:
        reads.append(list(names))
        return await real_read(client, names, *args)

    monkeypatch.setattr(autoscaler_module, "read_demand", recording_read)
    monkeypatch.setattr(autoscaler_module, "IDLE_POLL_S", 3.0)
    others = [f"idle{i}" for i in range(20)]
    for name in [NAME, *others]:
        await reconcile(
            ctx, namespace=NS, name=name, uid=f"uid-{name}", generation=1,
            spec=spec_for(redis_url, pollIntervalSeconds=5),
        )  # fmt: skip
    def read_all() -> bool:
        return len({name for r in reads for name in r}) == 21

    await eventually(read_all, 5, "every queue read once")
    await asyncio.sleep(0.3)  # the subscription is up
    reads.clear()
    client = bgq.Client(redis_url)
    await asyncio.to_thread(client.enqueue_many, QUEUE, [bgq.JobSpec("app.tasks.noop")] * 5)
    await eventually(kube.scales, 2.0, "the woken queue's decision")
    client.close()
    assert reads and all(r == [QUEUE] for r in reads), reads  # the 20 others were not read
    # the polls keep their cadence; queues at rest (nothing waiting, 0 replicas) are read on
    # them only every IDLE_POLL_S (an enqueue wakes them meanwhile), the busy one on every poll
    reads.clear()
    await eventually(read_all, 3 + 5 + 2, "the queues at rest read again")
    assert all(QUEUE in r for r in reads if len(r) > 1), reads  # the busy one: every poll
    # a wake-up that coincides with a poll tick still decides its queue, even one at rest
    (loop,) = autoscaler.loops.values()
    idle = f"{NS}/{others[0]}"
    reads.clear()
    await loop.tick({idle}, full=True)
    assert reads and idle in reads[0], reads


async def test_a_resync_verifies_an_unchanged_deployment_again_after_a_while(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The fast path is bounded: a drift no watch event reported is found by VERIFY_S."""
    from bgq_operator import reconcile as reconcile_module

    ctx, kube, _ = runtime
    spec = spec_for(redis_url)
    await apply(ctx, spec)
    dep = kube.deployments["bgq-orders"]
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "unseen:1"  # no watch event
    await apply(ctx, spec)
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "unseen:1"
    monkeypatch.setattr(reconcile_module, "VERIFY_S", 0.0)
    await apply(ctx, spec)
    fixed = kube.deployments["bgq-orders"]
    assert fixed["spec"]["template"]["spec"]["containers"][0]["image"] == "img:1"
    # a spec change always takes the full path
    monkeypatch.setattr(reconcile_module, "VERIFY_S", 600.0)
    await apply(ctx, spec_for(redis_url) | {"worker": {**spec["worker"], "image": "img:2"}})
    assert kube.deployments["bgq-orders"]["spec"]["template"]["spec"]["containers"][0][
        "image"
    ] == "img:2"


async def test_a_queue_at_rest_is_only_checked_until_its_figures_move(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Idle cost: a poll that finds a resting queue as its status says decides nothing (no
    decision task, no status work) and rewrites its control keys only every CONTROL_SYNC_S;
    figures that moved without a wake-up (a dead letter purged by hand) are decided."""
    from bgq_operator import autoscaler as autoscaler_module
    from bgq_operator import queuekeys

    ctx, _, autoscaler = runtime
    decided: list[str] = []
    synced: list[list[str]] = []
    real_decide = autoscaler_module.EndpointLoop._decide
    real_sync = queuekeys.sync

    def recording_decide(self: Any, state: QueueState, *args: Any) -> None:
        decided.append(state.queue_name)
        real_decide(self, state, *args)

    async def recording_sync(client: Any, queues: Any) -> Any:
        synced.append([str(q) for q, _ in queues])
        return await real_sync(client, queues)

    monkeypatch.setattr(autoscaler_module.EndpointLoop, "_decide", recording_decide)
    monkeypatch.setattr(queuekeys, "sync", recording_sync)
    state = await apply(ctx, spec_for(redis_url))
    (loop,) = autoscaler.loops.values()
    await loop.tick(full=True)  # the first read: decided (figures were unknown)
    await eventually(lambda: state.queue is not None and not loop._deciding, 5, "a decision")
    decided.clear()
    synced.clear()
    state.polled_at = 0.0  # due for its IDLE_POLL_S read
    await loop.tick(full=True)
    assert decided == [] and synced == [[]], (decided, synced)  # read, not decided, not synced
    # the control keys are written again after CONTROL_SYNC_S
    state.polled_at = state.synced_at = 0.0
    await loop.tick(full=True)
    assert synced == [[], [QUEUE]] and decided == []
    # figures that moved with no wake-up: a dead letter appeared (written by hand here)
    r = redis.Redis.from_url(redis_url)
    r.xadd(bgq.QueueName.parse(QUEUE).keys.dead, {"id": "x"})
    r.close()
    state.polled_at = 0.0
    await loop.tick(full=True)
    assert decided == [QUEUE]
    await eventually(lambda: state.queue is not None and state.queue.dead == 1, 5, "dead: 1")


def test_pause_and_resume_publish_a_wake_up(redis_url: str) -> None:
    """`bgq pause`/`resume` wake the operator for the queue (it decides at once, and a queue at
    rest is not left with a stale pause flag until its next control sync)."""
    from bgq.control import set_paused

    r = redis.Redis.from_url(redis_url)
    pubsub = r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(bgq.protocol.WAKE_CHANNEL)
    try:
        queue = bgq.QueueName.parse(QUEUE)
        assert set_paused(r, queue, True) is True
        assert set_paused(r, queue, False) is False
        seen: list[Any] = []
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                seen.append(message["data"])
        assert seen == [QUEUE.encode(), QUEUE.encode()]
    finally:
        pubsub.close()
        r.close()
