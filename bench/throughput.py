"""bgq throughput benchmark: no-op jobs/s enqueued (single and bulk) and processed by ONE worker
process, with Redis round trips and Redis commands per job.

    .venv/bin/python bench/throughput.py                 # starts its own redis-server
    .venv/bin/python bench/throughput.py --redis-url redis://127.0.0.1:6379/15 --jobs 50000
    .venv/bin/python bench/throughput.py --topology both   # standalone vs a 3+3 Redis Cluster

``--topology standalone|cluster|both`` runs the topology comparison instead: jobs/s and round
trips per job for 1 queue and for 6 queues (spread over the 3 primaries on a cluster), one
worker PROCESS per queue, on a private redis-server and/or a private 3-primary + 3-replica
cluster on loopback, side by side in one run.

Round trips are counted in-process by wrapping redis-py's ``send_packed_command`` (a pipeline
is one round trip); Redis commands come from ``INFO stats total_commands_processed`` (includes
commands run inside Lua). The worker runs in this process (it is the "one worker process"); the
job is an ``async def`` that does nothing. WARNING: the queue's keys are deleted first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import redis.asyncio.connection
import redis.connection

import bgq
from bgq.protocol import QueueName
from bgq.settings import Settings
from bgq.worker import Worker

QUEUE = "bench/throughput"


@bgq.task(name="bench_noop")
async def bench_noop() -> None:
    """The benchmarked job: nothing."""


class RoundTrips:
    """Counts round trips of the sync and asyncio redis-py connections."""

    def __init__(self) -> None:
        self.count = 0
        self._saved: list[tuple[type, Any]] = []

    def install(self) -> None:
        counter = self
        sync_cls = redis.connection.AbstractConnection
        async_cls = redis.asyncio.connection.AbstractConnection
        sync_orig = sync_cls.send_packed_command
        async_orig = async_cls.send_packed_command

        def sync_send(self: Any, *a: Any, **k: Any) -> Any:
            counter.count += 1
            return sync_orig(self, *a, **k)  # type: ignore[no-untyped-call]  # untyped in redis-py

        async def async_send(self: Any, *a: Any, **k: Any) -> Any:
            counter.count += 1
            return await async_orig(self, *a, **k)

        self._saved = [(sync_cls, sync_orig), (async_cls, async_orig)]
        sync_cls.send_packed_command = sync_send  # type: ignore[method-assign]
        async_cls.send_packed_command = async_send  # type: ignore[method-assign]


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free port (no persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: install it or pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bgq-bench-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.02)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def commands(r: redis.Redis) -> int:
    return int(r.info("stats")["total_commands_processed"])


def clear(r: redis.Redis) -> None:
    keys = QueueName.parse(QUEUE).keys
    for k in r.scan_iter(match=f"{keys.prefix}*", count=1000):
        r.delete(k)


def bench_enqueue(url: str, n: int, rt: RoundTrips) -> dict[str, float]:
    r = redis.Redis.from_url(url)
    out: dict[str, float] = {}
    with bgq.Client(url) as client:
        clear(r)
        client.enqueue(QUEUE, "bench_noop")  # warm up (script load, connection)
        c0, rt0, t0 = commands(r), rt.count, time.perf_counter()
        for _ in range(n):
            client.enqueue(QUEUE, "bench_noop")
        dt = time.perf_counter() - t0
        out["enqueue_single_per_s"] = n / dt
        out["enqueue_single_rt_per_job"] = (rt.count - rt0) / n
        out["enqueue_single_cmds_per_job"] = (commands(r) - c0 - 1) / n
        clear(r)
        c0, rt0, t0 = commands(r), rt.count, time.perf_counter()
        client.enqueue_many(QUEUE, (bgq.JobSpec("bench_noop") for _ in range(n)))
        dt = time.perf_counter() - t0
        out["enqueue_bulk_per_s"] = n / dt
        out["enqueue_bulk_rt_per_job"] = (rt.count - rt0) / n
    r.close()
    return out


async def bench_process(url: str, n: int, concurrency: int, rt: RoundTrips) -> dict[str, float]:
    r = redis.Redis.from_url(url)
    clear(r)
    with bgq.Client(url) as client:
        client.enqueue_many(QUEUE, (bgq.JobSpec("bench_noop") for _ in range(n)))
    settings = Settings(
        redis_url=url, queue=QUEUE, concurrency=concurrency, http_port=0, pod_name="bench"
    )
    worker = Worker(settings, QueueName.parse(QUEUE))
    counts = worker.metrics.counts
    c0 = commands(r)
    rt0 = rt.count
    t0 = time.perf_counter()
    task = asyncio.create_task(worker.run())
    while counts["succeeded"] < n or not worker.settler.empty:
        await asyncio.sleep(0.002)
        if task.done():
            task.result()
            raise SystemExit("worker stopped early")
    dt = time.perf_counter() - t0
    rts = rt.count - rt0
    cmds = commands(r) - c0 - 1
    worker.request_stop()
    await task
    keys = QueueName.parse(QUEUE).keys
    done = int(r.hget(keys.stats, "succeeded") or 0)
    r.close()
    if done != n:
        raise SystemExit(f"only {done} of {n} jobs recorded as succeeded")
    return {
        "process_per_s": n / dt,
        "process_rt_per_job": rts / n,
        "process_cmds_per_job": cmds / n,
        "process_seconds": dt,
    }


async def bench_latency(url: str, samples: int) -> dict[str, float]:
    """Enqueue -> start latency with an idle worker (jobs enqueued one at a time)."""
    r = redis.Redis.from_url(url, decode_responses=True)
    clear(r)
    settings = Settings(redis_url=url, queue=QUEUE, http_port=0, pod_name="bench")
    worker = Worker(settings, QueueName.parse(QUEUE))
    task = asyncio.create_task(worker.run())
    while not worker.ready:  # noqa: ASYNC110 - polls an in-process flag
        await asyncio.sleep(0.01)
    ids = []
    async with bgq.AsyncClient(url) as client:
        for _ in range(samples):
            ids.append((await client.enqueue(QUEUE, "bench_noop")).id)
            await asyncio.sleep(0.005)
        while worker.metrics.counts["succeeded"] < samples:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    worker.request_stop()
    await task
    keys = QueueName.parse(QUEUE).keys
    waits = sorted(
        int(r.hget(keys.job(i), "started_ms") or 0) - int(r.hget(keys.job(i), "enqueued_ms") or 0)
        for i in ids
    )
    r.close()
    return {
        "latency_p50_ms": float(waits[len(waits) // 2]),
        "latency_p99_ms": float(waits[int(len(waits) * 0.99) - 1]),
    }


def _topology_child(env: dict[str, str], queue: str, n: int, concurrency: int, out: Any) -> None:
    """One worker process: run ``queue`` until ``n`` jobs succeeded; report time and trips."""
    os.environ.update(env)
    rt = RoundTrips()
    rt.install()

    async def run() -> tuple[float, float, int]:
        settings = Settings(queue=queue, concurrency=concurrency, http_port=0, pod_name="bench")
        worker = Worker(settings, QueueName.parse(queue))
        task = asyncio.create_task(worker.run())
        while not worker.ready:  # noqa: ASYNC110 - polls an in-process flag
            await asyncio.sleep(0.005)
        rt0, t0 = rt.count, time.time()
        while worker.metrics.counts["succeeded"] < n or not worker.settler.empty:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        t1, rts = time.time(), rt.count - rt0
        worker.request_stop()
        await task
        return t0, t1, rts

    out.put((queue, *asyncio.run(run())))


def _queues_for(settings: Any, k: int) -> list[str]:
    """``k`` queue names; on a cluster spread evenly over the primaries."""
    from bgq.connection import is_cluster, sync_client

    client = sync_client(settings)
    try:
        if not is_cluster(client) or k == 1:
            return [f"bench/topo{i}" for i in range(k)]
        primaries = {n.name for n in client.get_primaries()}
        per: dict[str, list[str]] = {p: [] for p in primaries}
        i = 0
        while min(len(v) for v in per.values()) < k // len(per):
            name = f"bench/topo{i}"
            node = client.get_node_from_key(QueueName.parse(name).keys.ready[1])
            per[node.name].append(name)
            i += 1
        return [q for qs in per.values() for q in qs[: k // len(per)]]
    finally:
        client.close()


def topology_run(settings: Any, k: int, n: int, concurrency: int) -> dict[str, float]:
    """``k`` queues x ``n`` jobs, one worker process per queue; aggregate jobs/s, trips/job."""
    import multiprocessing

    queues = _queues_for(settings, k)
    with bgq.Client(redis_settings=settings) as client:
        for q in queues:
            client.enqueue_many(q, (bgq.JobSpec("bench_noop") for _ in range(n)))
    env = {
        "BGQ_REDIS_URL": settings.url,
        "BGQ_REDIS_MODE": settings.mode.value,
        "BGQ_REDIS_NODES": settings.nodes,
    }
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_topology_child, args=(env, q, n, concurrency, out)) for q in queues
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(30)
    t0 = min(r[1] for r in results)
    t1 = max(r[2] for r in results)
    trips = sum(r[3] for r in results)
    per_queue = [n / (r[2] - r[1]) for r in results]
    return {
        "jobs_per_s": k * n / (t1 - t0),
        "per_queue_jobs_per_s": sum(per_queue) / len(per_queue),
        "rt_per_job": trips / (k * n),
    }


SETUPS = ("standalone", "standalone+replica", "cluster 3+0", "cluster 3+3")


def _start_setups(stack: contextlib.ExitStack, which: str) -> dict[str, Any]:
    """The Redis setups of the comparison, each started once for every round."""
    from tests.conftest import RedisNode, free_port, start_redis_cluster

    from bgq.settings import RedisMode, RedisSettings

    workdir = Path(tempfile.mkdtemp(prefix="bgq-bench-topology-"))
    stack.callback(shutil.rmtree, workdir, True)
    setups: dict[str, Any] = {}
    if which in ("standalone", "both"):
        url = stack.enter_context(redis_server())
        setups["standalone"] = RedisSettings(mode=RedisMode.STANDALONE, url=url)
        primary = RedisNode("127.0.0.1", free_port(), workdir / "primary", [])
        replica = RedisNode("127.0.0.1", free_port(), workdir / "replica",
                            ["--replicaof", "127.0.0.1", str(primary.port)])
        for node in (primary, replica):
            node.start()
            stack.callback(node.stop)
        setups["standalone+replica"] = RedisSettings(
            mode=RedisMode.STANDALONE, url=f"redis://{primary.addr}/0")
    if which in ("cluster", "both"):
        for name, replicas in (("cluster 3+0", 0), ("cluster 3+3", 1)):
            servers = start_redis_cluster(workdir / name.replace(" ", "-"), replicas=replicas)
            for node in servers.nodes:
                stack.callback(node.stop)
            setups[name] = servers.settings()
    return setups


def topology_main(which: str, n: int, concurrency: int, rounds: int) -> int:
    """The ``--topology`` comparison (see the module doc): every setup and queue count once per
    round, rounds interleaved (so a burst of load on the machine hits all setups alike), and the
    median of the rounds reported."""
    sys.path.insert(0, str(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import statistics

    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        setups = _start_setups(stack, which)
        for _ in range(rounds):
            for name, settings in setups.items():
                for k in (1, 6):
                    runs.setdefault((name, k), []).append(topology_run(settings, k, n, concurrency))

    def median(name: str, k: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[(name, k)])

    print(
        f"bgq {bgq.__version__} topology comparison (python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {n} no-op jobs per "
        f"queue, concurrency {concurrency}, one worker process per queue; median of {rounds} "
        "interleaved rounds)"
    )
    for (name, k), results in runs.items():
        each = ", ".join(f"{r['per_queue_jobs_per_s']:,.0f}" for r in results)
        print(
            f"  {name:<18} {k} queue(s): {median(name, k, 'jobs_per_s'):>8,.0f} jobs/s total, "
            f"{median(name, k, 'per_queue_jobs_per_s'):>7,.0f} jobs/s per queue (rounds: {each}), "
            f"{median(name, k, 'rt_per_job'):.3f} round trips/job"
        )
    pairs = (("cluster 3+0", "standalone", "cluster mode alone"),
             ("cluster 3+3", "standalone+replica", "same replication"),
             ("cluster 3+3", "standalone", "replicated cluster vs a lone server"))
    for cluster, base, what in pairs:
        if (cluster, 1) not in runs or (base, 1) not in runs:
            continue
        for k in (1, 6):
            cost = (median(base, k, "per_queue_jobs_per_s")
                    / median(cluster, k, "per_queue_jobs_per_s") - 1)
            print(f"  {cluster} vs {base} ({what}), {k} queue(s): {cost * 100:+.1f} % cost per "
                  "job (per-queue rate)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--redis-url", help="use this Redis (default: start a private redis-server)")
    p.add_argument("--jobs", type=int, default=20_000, help="jobs processed (default 20000)")
    p.add_argument("--enqueue-jobs", type=int, default=5_000, help="jobs for the enqueue runs")
    p.add_argument("--concurrency", type=int, default=200, help="worker slots (default 200)")
    p.add_argument(
        "--topology",
        choices=["standalone", "cluster", "both"],
        help="compare topologies instead (1 and 6 queues, a process per queue)",
    )
    p.add_argument("--topology-jobs", type=int, default=20_000, help="jobs per queue (20000)")
    p.add_argument("--topology-rounds", type=int, default=3, help="interleaved rounds (3)")
    args = p.parse_args(argv)
    if args.topology:
        return topology_main(args.topology, args.topology_jobs, min(args.concurrency, 100),
                             args.topology_rounds)
    rt = RoundTrips()
    rt.install()
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(redis_server())
        results = bench_enqueue(url, args.enqueue_jobs, rt)
        results.update(asyncio.run(bench_process(url, args.jobs, args.concurrency, rt)))
        results.update(asyncio.run(bench_latency(url, 300)))
        clear(redis.Redis.from_url(url))
    print(
        f"bgq {bgq.__version__} throughput (python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, redis at {'given URL' if args.redis_url else 'local'})"
    )
    print(
        f"  enqueue, one call per job : {results['enqueue_single_per_s']:>9,.0f} jobs/s  "
        f"{results['enqueue_single_rt_per_job']:.2f} round trips/job  "
        f"{results['enqueue_single_cmds_per_job']:.2f} redis cmds/job"
    )
    print(
        f"  enqueue_many (pipelined)  : {results['enqueue_bulk_per_s']:>9,.0f} jobs/s  "
        f"{results['enqueue_bulk_rt_per_job']:.3f} round trips/job"
    )
    print(
        f"  processed, 1 worker proc  : {results['process_per_s']:>9,.0f} jobs/s  "
        f"{results['process_rt_per_job']:.3f} round trips/job  "
        f"{results['process_cmds_per_job']:.2f} redis cmds/job  "
        f"({args.jobs} no-op jobs, concurrency {args.concurrency}, "
        f"{results['process_seconds']:.2f} s)"
    )
    print(
        f"  enqueue->start, idle      : p50 {results['latency_p50_ms']:.0f} ms, "
        f"p99 {results['latency_p99_ms']:.0f} ms (300 jobs enqueued one at a time)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
