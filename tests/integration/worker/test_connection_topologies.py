"""bgq.connection on real servers: standalone, a 3+3 Redis Cluster and Sentinel; the clear
errors for topology mistakes; the blocking connection and CLIENT UNBLOCK on a cluster."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, Any

import pytest

import bgq
from bgq.connection import BlockingConnection, async_client, probe, sync_client
from bgq.errors import ConfigError, RedisUnavailable
from bgq.protocol import QueueName
from bgq.settings import RedisMode, RedisSettings

if TYPE_CHECKING:
    from tests.conftest import RedisClusterServers, SentinelServers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def queues_on_every_primary(servers: RedisClusterServers, n: int = 6) -> list[QueueName]:
    """``n`` queue names whose slots are spread over all three primaries."""
    by_node: dict[str, list[QueueName]] = {}
    i = 0
    while min((len(v) for v in by_node.values()), default=0) < n // 3 or len(by_node) < 3:
        q = QueueName.parse(f"topo/q{i}")
        by_node.setdefault(servers.node_for_key(q.keys.ready[1]).addr, []).append(q)
        i += 1
    return [q for qs in by_node.values() for q in qs[: n // 3]]


def test_cluster_client_reaches_queues_on_every_primary(redis_cluster: RedisClusterServers) -> None:
    redis_cluster.flush()
    queues = queues_on_every_primary(redis_cluster)
    with bgq.Client(redis_settings=redis_cluster.settings(), namespace="topo") as client:
        for q in queues:
            for i in range(50):
                client.enqueue(q, "t", i)
        for q in queues:
            assert client.stats(q).backlog == 50, q
    owners = {redis_cluster.node_for_key(q.keys.ready[1]).addr for q in queues}
    assert len(owners) == 3


def test_sentinel_client_follows_the_master(sentinel_servers: SentinelServers) -> None:
    with bgq.Client(redis_settings=sentinel_servers.settings(), namespace="s") as client:
        job = client.enqueue("s/jobs", "t", 1)
        assert client.get("s/jobs", job.id).state.value == "queued"
    assert sentinel_servers.current_master() == (
        sentinel_servers.master.host,
        sentinel_servers.master.port,
    )


def test_cluster_node_in_standalone_mode_names_the_setting(
    redis_cluster: RedisClusterServers,
) -> None:
    # a queue whose slot is NOT on the node we talk to: a plain client gets MOVED
    seed = redis_cluster.nodes[0]
    q = next(
        q
        for q in (QueueName.parse(f"x/q{i}") for i in range(100))
        if redis_cluster.node_for_key(q.keys.ready[1]).addr != seed.addr
    )
    with bgq.Client(f"redis://{seed.addr}/0") as client, pytest.raises(ConfigError) as err:
        client.enqueue(q, "t")
    assert "BGQ_REDIS_MODE=cluster" in str(err.value)


def test_standalone_server_in_cluster_mode_names_the_setting(redis_url: str) -> None:
    s = RedisSettings(mode=RedisMode.CLUSTER, url=redis_url.removesuffix("/0"))
    with pytest.raises(ConfigError) as err:
        sync_client(s)
    assert "BGQ_REDIS_MODE is cluster" in str(err.value)
    assert "BGQ_REDIS_MODE=standalone" in str(err.value)


def test_unreachable_seeds_are_unavailable_not_a_traceback() -> None:
    port = free_port()
    s = RedisSettings(
        mode=RedisMode.CLUSTER, url=f"redis://127.0.0.1:{port}", nodes=f"127.0.0.1:{free_port()}"
    )
    with pytest.raises(RedisUnavailable) as err:
        sync_client(s)
    assert "BGQ_REDIS_NODES" in str(err.value) and str(port) in str(err.value)


def test_unknown_sentinel_master_names_the_setting(sentinel_servers: SentinelServers) -> None:
    s = sentinel_servers.settings().model_copy(update={"sentinel_master": "nosuchmaster"})
    with bgq.Client(redis_settings=s) as client, pytest.raises(ConfigError) as err:
        client.enqueue("s/jobs", "t")
    assert "BGQ_REDIS_SENTINEL_MASTER" in str(err.value) and "nosuchmaster" in str(err.value)


async def test_probe_tells_the_topologies_apart(
    redis_url: str, redis_cluster: RedisClusterServers, sentinel_servers: SentinelServers
) -> None:
    for settings, expect in [
        (RedisSettings(url=redis_url), "standalone"),
        (redis_cluster.settings(), "cluster of 3 primaries"),
        (sentinel_servers.settings(), "sentinel"),
    ]:
        client = async_client(settings)
        try:
            assert (await probe(client, settings)).startswith(expect)
        finally:
            await client.aclose()
    wrong = RedisSettings(url=f"redis://{redis_cluster.nodes[0].addr}/0")
    client = async_client(wrong)
    try:
        with pytest.raises(ConfigError, match="BGQ_REDIS_MODE=cluster"):
            await probe(client, wrong)
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", ["standalone", "cluster", "sentinel"])
async def test_blocking_read_is_unblocked_on_its_node(
    kind: str, request: pytest.FixtureRequest, redis_url: str
) -> None:
    settings: Any
    if kind == "standalone":
        settings = RedisSettings(url=redis_url)
    else:
        servers = request.getfixturevalue(
            "redis_cluster" if kind == "cluster" else "sentinel_servers"
        )
        settings = servers.settings()
    client = async_client(settings)
    keys = QueueName.parse("blk/q").keys
    stream = keys.ready[1]
    await client.xgroup_create(stream, "workers", id="0", mkstream=True)
    blocking = BlockingConnection(client, stream)
    conn = await blocking.get()
    t0 = time.monotonic()
    read = asyncio.ensure_future(
        conn.xreadgroup("workers", "c1", {stream: ">"}, count=1, block=20_000)
    )
    deadline = time.monotonic() + 5
    while not await blocking.unblock():  # the read may not have reached the server yet
        assert time.monotonic() < deadline, "the blocked connection was never unblocked"
        await asyncio.sleep(0.01)
    assert await asyncio.wait_for(read, 5) in ([], None, {})
    assert time.monotonic() - t0 < 5
    await blocking.aclose()
    await client.delete(stream)
    await client.aclose()
