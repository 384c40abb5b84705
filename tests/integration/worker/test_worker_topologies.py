"""Real workers (in-process ``bgq.worker.Worker``) on a real 3+3 Redis Cluster and on Sentinel:
queues on every primary each run every job exactly once; a drain unblocks the blocking read on
the queue's node at once; kill -9 of the queue's primary (cluster) and a Sentinel failover
mid-run: workers and producers recover by themselves. Executions are recorded on the separate
standalone server (``bgqtest:*`` lists), so the count survives whatever happens to the cluster.
Figures (lost, duplicates, recovery time) are printed; run with ``-s`` to see them."""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redis.asyncio

import bgq
from bgq.protocol import QueueName
from bgq.settings import RedisSettings
from bgq.worker import Worker
from conftest import InProcessWorker, await_until, make_settings

if TYPE_CHECKING:
    from tests.conftest import RedisClusterServers, SentinelServers


_side: dict[str, redis.asyncio.Redis] = {}


@bgq.task(name="topo_record", retries=5)
async def topo_record(key: str, i: int) -> int:
    """Record one execution of job ``i`` on the standalone side channel."""
    url = os.environ["BGQ_TEST_REDIS_URL"]
    loop_key = f"{url}:{id(asyncio.get_running_loop())}"
    if loop_key not in _side:
        _side[loop_key] = redis.asyncio.Redis.from_url(url)
    await _side[loop_key].rpush(f"bgqtest:{key}", i)
    return i


def settings_for(topology: RedisSettings, queue: QueueName, **overrides: Any) -> Any:
    return make_settings(
        topology.url,
        redis_mode=topology.mode.value,
        redis_nodes=topology.nodes,
        redis_sentinel_master=topology.sentinel_master,
        queue=str(queue),
        **overrides,
    )


async def start(
    topology: RedisSettings, queue: QueueName, consumer: str, **kw: Any
) -> InProcessWorker:
    w = InProcessWorker(Worker(settings_for(topology, queue, **kw), queue, consumer=consumer))
    return await w.start()


def executions(rdb: redis.Redis, key: str) -> collections.Counter[int]:
    return collections.Counter(int(x) for x in rdb.lrange(f"bgqtest:{key}", 0, -1))


async def test_queues_on_every_primary_run_each_job_exactly_once(
    redis_cluster: RedisClusterServers, rdb: redis.Redis
) -> None:
    redis_cluster.flush()
    topo = redis_cluster.settings()
    queues: list[QueueName] = []
    owners: dict[str, int] = {}
    i = 0
    while len(queues) < 6:  # two queues per primary
        q = QueueName.parse(f"topo/w{i}")
        owner = redis_cluster.node_for_key(q.keys.ready[1]).addr
        if owners.get(owner, 0) < 2:
            owners[owner] = owners.get(owner, 0) + 1
            queues.append(q)
        i += 1
    workers = [
        await start(topo, q, f"c{n}", concurrency=20, lease_seconds=30)
        for n, q in enumerate(queues)
    ]
    n = 200
    with bgq.Client(redis_settings=topo) as client:
        for q in queues:
            client.enqueue_many(q, [bgq.JobSpec("topo_record", args=[str(q), j]) for j in range(n)])

    def all_ran() -> bool:
        return all(sum(executions(rdb, str(q)).values()) >= n for q in queues)

    await await_until(all_ran, 90, "every job of the 6 queues to run")
    t0 = time.monotonic()
    for w in workers:
        assert await w.stop(10) == 0
    stop_s = time.monotonic() - t0
    for q in queues:
        counts = executions(rdb, str(q))
        assert set(counts) == set(range(n)) and set(counts.values()) == {1}, q
    with bgq.Client(redis_settings=topo) as client:
        for q in queues:
            d = client.stats(q)
            assert (d.backlog, d.in_flight) == (0, 0)
    # six idle workers blocked on three nodes: each drain unblocked its read at once
    assert stop_s < 6 * 1.5, f"stopping 6 idle workers took {stop_s:.2f}s"
    print(
        f"\ncluster: 6 queues x {n} jobs over 3 primaries, all exactly once; "
        f"6 idle workers stopped in {stop_s:.2f}s"
    )


def producer(
    topo: RedisSettings,
    queue: QueueName,
    n: int,
    acked: list[int],
    errors: list[float],
    wait_replicas: int = 0,
) -> threading.Thread:
    """Enqueue jobs 0..n-1 with fixed job ids, retrying each until Redis acknowledges it."""

    def run() -> None:
        client = bgq.Client(redis_settings=topo, wait_replicas=wait_replicas)
        for j in range(n):
            while True:
                try:
                    client.enqueue_with(
                        queue, "topo_record", args=[str(queue), j], job_id=f"job-{j}"
                    )
                    acked.append(j)
                    break
                except (bgq.BgqError, redis.RedisError, OSError):
                    errors.append(time.monotonic())
                    time.sleep(0.05)
            time.sleep(0.002)
        client.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


async def failover_run(
    topo: RedisSettings,
    queue: QueueName,
    rdb: redis.Redis,
    kill: Any,
    n: int = 1500,
    wait_replicas: int = 0,
) -> dict[str, Any]:
    workers = [await start(topo, queue, f"f{k}", concurrency=10, lease_seconds=3) for k in range(2)]
    acked: list[int] = []
    errors: list[float] = []
    t = producer(topo, queue, n, acked, errors, wait_replicas)
    await await_until(lambda: len(acked) > n // 3, 60, "a third of the jobs enqueued")
    killed_at = time.monotonic()
    kill()
    await await_until(lambda: not t.is_alive(), 120, "the producer to finish (it retries)")
    done_enqueue = time.monotonic()
    recovered_after = (max(errors) - killed_at) if errors else 0.0

    def ran() -> int:
        return len(executions(rdb, str(queue)))

    # every acknowledged job that survived the failover must run; wait until the count settles
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now_ran = ran()
        if now_ran != last:
            last, stable_since = now_ran, time.monotonic()
        if now_ran >= n:
            break
        if time.monotonic() - stable_since > 3:  # nothing moves: is anything still pending?
            with bgq.Client(redis_settings=topo) as probe_client:
                d = probe_client.stats(queue)
            if d.backlog + d.in_flight + d.delayed == 0:
                break
        await asyncio.sleep(0.2)
    for w in workers:
        await w.stop(15)
    counts = executions(rdb, str(queue))
    lost_states: dict[str, str] = {}
    with bgq.Client(redis_settings=topo) as client:
        for j in sorted(set(acked) - set(counts))[:5]:
            try:
                info = client.get(queue, f"job-{j}")
                lost_states[f"job-{j}"] = f"{info.state.value} attempt={info.attempt}"
            except bgq.JobNotFound:
                lost_states[f"job-{j}"] = "no record"
    return {
        "lost_states": lost_states,
        "acked": len(set(acked)),
        "ran": len(counts),
        "lost": len(set(acked) - set(counts)),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "producer_errors": len(errors),
        "producer_recovery_s": round(recovered_after, 2),
        "enqueue_done_after_kill_s": round(done_enqueue - killed_at, 2),
    }


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_kill_minus_9_of_the_queues_primary(
    private_redis_cluster: RedisClusterServers, rdb: redis.Redis, wait_replicas: int
) -> None:
    servers = private_redis_cluster
    queue = QueueName.parse("topo/failover")
    victim = servers.node_for_key(queue.keys.ready[1])

    def kill_then_rejoin() -> None:
        """kill -9; once the replica took over, the old primary restarts and rejoins as its
        replica (as a restarted pod would), so WAIT 1 can be satisfied again."""
        victim.kill()

        def rejoin() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if servers.node_for_key(queue.keys.ready[1]).addr != victim.addr:
                        break
                except (AssertionError, redis.RedisError):
                    pass
                time.sleep(0.1)
            victim.start()

        threading.Thread(target=rejoin, daemon=True).start()

    figures = await failover_run(
        servers.settings(), queue, rdb, kill_then_rejoin, wait_replicas=wait_replicas
    )
    print(f"\ncluster kill -9 of the queue's primary, wait_replicas={wait_replicas}: {figures}")
    if wait_replicas:
        assert figures["lost"] == 0, figures  # acknowledged => on the replica that took over
    assert figures["acked"] == 1500
    # Redis replication is asynchronous: a job acknowledged just before the kill may be lost
    # (reported, bounded); nothing acknowledged after the promotion may be.
    assert figures["lost"] <= 50, figures
    assert servers.node_for_key(queue.keys.ready[1]).addr != victim.addr  # replica promoted


async def test_sentinel_failover_mid_run(
    sentinel_servers: SentinelServers, rdb: redis.Redis
) -> None:
    queue = QueueName.parse("topo/sentinel")
    figures = await failover_run(
        sentinel_servers.settings(), queue, rdb, sentinel_servers.master.kill
    )
    print(f"\nsentinel failover (kill -9 of the master): {figures}")
    assert figures["acked"] == 1500
    assert figures["lost"] <= 50, figures
    assert sentinel_servers.current_master() == (
        sentinel_servers.replica.host,
        sentinel_servers.replica.port,
    )


def _node_id(node: Any) -> str:
    c = node.client()
    try:
        return str(c.execute_command("CLUSTER MYID"))
    finally:
        c.close()


async def test_resharding_the_queues_slot_mid_run(
    private_redis_cluster: RedisClusterServers, rdb: redis.Redis
) -> None:
    """``redis-cli --cluster reshard`` moves the queue's slot (MIGRATE, ASK, then MOVED) while
    a producer enqueues and two workers run: nothing lost, nothing run twice."""
    import shutil
    import subprocess

    from redis.crc import key_slot

    servers = private_redis_cluster
    src = servers.primaries()[0]
    c = src.client()
    try:
        ranges = [(lo, hi, rest) for lo, hi, *rest in c.execute_command("CLUSTER SLOTS")]  # type: ignore[no-untyped-call]
    finally:
        c.close()
    lo = next(lo for lo, _, rest in ranges if int(rest[0][1]) == src.port)
    # a queue whose slot is the first of src's range: redis-cli moves slots from the start
    queue = next(
        q
        for q in (QueueName.parse(f"topo/rs{i}") for i in range(200_000))
        if key_slot(q.keys.ready[1].encode()) == lo
    )
    dst = next(n for n in servers.primaries() if n.addr != src.addr)
    topo = servers.settings()
    workers = [await start(topo, queue, f"r{k}", concurrency=10) for k in range(2)]
    n = 1500
    acked: list[int] = []
    errors: list[float] = []
    t = producer(topo, queue, n, acked, errors)
    await await_until(lambda: len(acked) > n // 3, 60, "a third of the jobs enqueued")
    cli = shutil.which("redis-cli")
    assert cli is not None
    done = await asyncio.to_thread(
        subprocess.run,
        [cli, "--cluster", "reshard", src.addr, "--cluster-from", _node_id(src),
         "--cluster-to", _node_id(dst), "--cluster-slots", "1", "--cluster-yes",
         "--cluster-pipeline", "10"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert servers.node_for_key(queue.keys.ready[1]).addr == dst.addr, "the slot did not move"
    await await_until(lambda: not t.is_alive(), 120, "the producer to finish")
    await await_until(lambda: len(executions(rdb, str(queue))) >= n, 90, "every job to run")
    for w in workers:
        assert await w.stop(15) == 0
    counts = executions(rdb, str(queue))
    dupes = sum(v - 1 for v in counts.values() if v > 1)
    print(
        f"\nreshard of the queue's slot mid-run: {n} acked, {len(counts)} ran, "
        f"{dupes} duplicates, producer errors {len(errors)}"
    )
    assert set(counts) == set(range(n)) and dupes == 0


def test_durable_enqueue_is_on_the_replica_when_acknowledged(
    redis_cluster: RedisClusterServers,
) -> None:
    """``wait_replicas=1``: every acknowledged job is already on its primary's replica (read
    there with READONLY right after the ack); the cost of the extra WAIT is printed."""
    redis_cluster.flush()
    topo = redis_cluster.settings()
    queue = QueueName.parse("topo/durable")
    primary = redis_cluster.node_for_key(queue.keys.ready[1])
    replica = next(
        n for n in redis_cluster.live()
        if n.addr != primary.addr
        and n.client().info("replication").get("master_port") == primary.port
    )  # fmt: skip
    rc = replica.client()
    rc.execute_command("READONLY")  # type: ignore[no-untyped-call]
    n = 300
    rates = {}
    for wait in (0, 1):
        with bgq.Client(redis_settings=topo, wait_replicas=wait) as client:
            client.enqueue(queue, "t")  # warm up
            t0 = time.perf_counter()
            ids = [client.enqueue(queue, "t").id for _ in range(n)]
            rates[wait] = n / (time.perf_counter() - t0)
            if wait:
                missing = [i for i in ids if not rc.exists(queue.keys.job(i))]
                assert missing == [], f"{len(missing)} acknowledged jobs not on the replica"
    rc.close()
    print(
        f"\nenqueue one at a time on the cluster: {rates[0]:,.0f} jobs/s plain, "
        f"{rates[1]:,.0f} jobs/s with wait_replicas=1 "
        f"({(rates[0] / rates[1] - 1) * 100:+.0f} % time per enqueue)"
    )
