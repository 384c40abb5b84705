"""The operator on a real Redis Cluster and Sentinel (fake Kubernetes API, real Redis): a
``mode: Cluster`` queue wakes and scales in one step, demand for 20 queues on all three
primaries is one pipeline per node, and topology mistakes become a RedisMisconfigured condition
(never an exception out of reconcile)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio.cluster
import redis.asyncio.connection
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
from bgq.connection import async_client
from bgq.protocol import QueueName
from bgq.stats import read_demand
from bgq_operator import conditions as cond
from bgq_operator.autoscaler import Autoscaler
from bgq_operator.reconcile import Context

if TYPE_CHECKING:
    from tests.conftest import RedisClusterServers, SentinelServers

__all__ = ["runtime"]  # the fixture, shared with test_op_runtime.py


def cluster_spec(servers: RedisClusterServers, **scaling: Any) -> dict[str, Any]:
    spec: dict[str, Any] = spec_for(servers.seed_url, **scaling)
    spec["redis"] = {
        "url": servers.seed_url,
        "mode": "Cluster",
        "nodes": servers.other_seeds.split(","),
    }
    return spec


async def test_cluster_queue_wakes_and_scales_in_one_step(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_cluster: RedisClusterServers
) -> None:
    redis_cluster.flush()
    ctx, kube, _ = runtime
    await apply(ctx, cluster_spec(redis_cluster))
    assert cond.is_true(kube.status["conditions"], cond.READY), kube.status["conditions"]
    assert cond.is_true(kube.status["conditions"], cond.REDIS_REACHABLE)
    env = {
        e["name"]: e.get("value")
        for e in kube.deployments[f"bgq-{NAME}"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert (
        env["BGQ_REDIS_MODE"] == "cluster" and env["BGQ_REDIS_NODES"] == redis_cluster.other_seeds
    )
    await asyncio.sleep(0.3)  # the wake subscription is up; the poll interval is 30 s
    with bgq.Client(redis_settings=redis_cluster.settings()) as client:
        started = time.monotonic()
        await asyncio.to_thread(client.enqueue_many, QUEUE, [bgq.JobSpec("t")] * 25)
    await eventually(kube.scales, 3.0, "a scale decision woken by bgq:wake on the cluster")
    latency = kube.calls[-1][0] - started
    assert kube.scales() == [3]
    assert latency < 1.5, f"enqueue -> decision took {latency:.3f}s (a poll would be 30 s)"
    await eventually(lambda: kube.status.get("queue", {}).get("backlog") == 25, 3, "status")


async def test_demand_for_20_queues_is_one_pipeline_per_node(
    redis_cluster: RedisClusterServers,
) -> None:
    redis_cluster.flush()
    queues = [QueueName.parse(f"{NS}/q{i}") for i in range(20)]
    owners = {redis_cluster.node_for_key(q.keys.ready[1]).addr for q in queues}
    assert len(owners) == 3, "the 20 queues must spread over all three primaries"
    with bgq.Client(redis_settings=redis_cluster.settings()) as client:
        for q in queues:
            client.enqueue(q, "t")
    client_ = async_client(redis_cluster.settings())
    assert isinstance(client_, redis.asyncio.cluster.RedisCluster)
    await client_.initialize()
    await read_demand(client_, queues, int(time.time() * 1000))  # warm: a connection per node
    sends: list[tuple[str, int]] = []
    cls = redis.asyncio.connection.AbstractConnection
    original = cls.send_packed_command

    async def counting(self: Any, *a: Any, **k: Any) -> Any:
        sends.append((self.host, self.port))
        return await original(self, *a, **k)

    cls.send_packed_command = counting  # type: ignore[method-assign]
    try:
        demand = await read_demand(client_, queues, int(time.time() * 1000))
    finally:
        cls.send_packed_command = original  # type: ignore[method-assign]
        await client_.aclose()
    assert all(d.backlog == 1 for d in demand.values())
    # ONE write (one pipelined round trip) to each primary that holds queues, none elsewhere
    assert sorted(f"{h}:{p}" for h, p in sends) == sorted(owners), sends


@pytest.mark.parametrize(
    "mistake",
    [
        "standalone-on-cluster",
        "cluster-on-standalone",
        "unknown-sentinel-master",
        "unreachable-seeds",
    ],
)
async def test_topology_mistakes_become_a_condition(
    runtime: tuple[Context, FakeKube, Autoscaler],
    request: pytest.FixtureRequest,
    redis_url: str,
    mistake: str,
) -> None:
    ctx, kube, _ = runtime
    if mistake == "standalone-on-cluster":
        servers: Any = request.getfixturevalue("redis_cluster")
        redis_spec: dict[str, Any] = {"url": servers.seed_url + "/0"}
        reason, words = "RedisMisconfigured", "spec.redis.mode: Cluster"
    elif mistake == "cluster-on-standalone":
        redis_spec = {"url": redis_url.removesuffix("/0"), "mode": "Cluster"}
        reason, words = "RedisMisconfigured", "spec.redis.mode is Cluster"
    elif mistake == "unknown-sentinel-master":
        sentinels: SentinelServers = request.getfixturevalue("sentinel_servers")
        redis_spec = {
            "url": f"redis://{sentinels.sentinels[0].addr}/0",
            "mode": "Sentinel",
            "sentinelMaster": "nosuchmaster",
        }
        reason, words = "RedisMisconfigured", "spec.redis.sentinelMaster"
    else:
        redis_spec = {"url": "redis://127.0.0.1:1", "mode": "Cluster", "nodes": ["127.0.0.1:2"]}
        reason, words = "RedisUnreachable", "cannot reach"
    spec = spec_for(redis_url)
    spec["redis"] = redis_spec
    state = await apply(ctx, spec)  # must not raise
    ready = next(c for c in kube.status["conditions"] if c["type"] == cond.READY)
    assert ready["status"] == "False" and ready["reason"] == reason, ready
    assert words in ready["message"], ready["message"]
    assert "BGQ_" not in ready["message"], ready["message"]
    assert state.deployment is not None  # the Deployment is still managed


async def test_an_idle_queue_writes_no_status(
    runtime: tuple[Context, FakeKube, Autoscaler],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 1,000 idle queues every status PATCH counts: once settled, an idle queue writes none
    (the window's zero-need timestamp alone does not make a write, however old the last one)."""
    import bgq_operator.reconcile as rec

    monkeypatch.setattr(rec, "VOLATILE_REFRESH_S", 0.1)
    ctx, kube, _ = runtime
    writes: list[dict[str, Any]] = []
    original = kube.patch_queue_status

    async def counting(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        writes.append(status)
        return await original(namespace, name, status)

    kube.patch_queue_status = counting  # type: ignore[method-assign]
    await apply(ctx, spec_for(redis_url, pollIntervalSeconds=1))
    await eventually(lambda: "memory" in kube.status.get("scaling", {}), 5, "a first decision")
    settled = len(writes)
    first_window = kube.status["scaling"]["memory"]["window"]
    await asyncio.sleep(3.5)  # >= 3 polls, each 10x the (patched) volatile refresh interval
    assert len(writes) == settled, [w["scaling"]["memory"] for w in writes[settled:]]
    assert first_window and first_window[-1][1] == 0
    # and a real change is still written at once
    with bgq.Client(redis_url) as client:
        client.enqueue(QUEUE, "t")
    await eventually(lambda: len(writes) > settled, 3, "the status write for a new job")
