"""The web console's overview with many queues: latency of ``GET /api/overview`` (what every SSE
tick of every open overview computes) and the Redis round trips it costs.

    .venv/bin/python bench/console.py [--queues 200] [--requests 300] [--concurrency 1,8]

A private redis-server gets ``--queues`` queues, each with a backlog of 20 jobs, 5 in flight
(delivered to a consumer), 3 dead letters, two worker heartbeats and an hour of decision records
(one per 5 s, as the operator writes them), and every queue is listed in ``bgq:queues``. The
console runs in this process under uvicorn (h11, as ``bgq console``), with anonymous read-only
access; the load generator is httpx with keep-alive, N concurrent requests in a closed loop,
after 20 warm-up requests. Every answer must be ``200`` and list every queue. Figures: p50 / p99 /
max latency in ms, requests/s, Redis commands per request (from INFO commandstats, counting the
calls inside the demand script), and the size of one overview document.

The console computes the overview once per ``min(1 s, refresh/2)`` for all its viewers and live
streams together, so concurrent requests mostly share one computation; the last row times one
computation itself (``ConsoleData.overview`` of all queues, uncached, three round trips to
Redis). Whether redis-py uses hiredis (the console extra installs it) is printed: without it
redis-py's pure-Python reply parser dominates the computation.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from typing import Any

import httpx
import redis
import uvicorn

from bgq import decisions
from bgq.client import AsyncClient
from bgq.console import ConsoleConfig, create_app
from bgq.console.data import ConsoleData
from bgq.protocol import QueueName
from throughput import redis_server


def populate(url: str, queues: int) -> None:
    r = redis.Redis.from_url(url)
    now = int(time.time() * 1000)
    for i in range(queues):
        q = QueueName(f"team-{i % 20}", f"queue-{i}")
        keys = q.keys
        pipe = r.pipeline(transaction=False)
        for j in range(25):
            job = f"j{j}"
            job_hash: Any = {"state": "queued", "env": '{"task": "t"}', "attempt": 1,
                             "band": 1, "enqueued_ms": now}
            pipe.hset(keys.job(job), mapping=job_hash)
            pipe.xadd(keys.ready[1], {"id": job})
        pipe.xgroup_create(keys.ready[1], "workers", id="0", mkstream=True)
        for j in range(3):
            pipe.xadd(keys.dead, {"id": f"d{j}", "reason": "retries-exhausted", "error": "x",
                                  "traceback": "", "env": "{}", "dead_ms": now})  # fmt: skip
        for w in range(2):
            consumer = f"pod-{i}-{w}:1"
            pipe.zadd(keys.workers, {consumer: now})
            beat: Any = {"pod": f"pod-{i}-{w}", "pid": 1, "state": "busy", "in_flight": 2,
                    "heartbeat_ms": now, "concurrency": 4}
            pipe.hset(keys.worker(consumer), mapping=beat)
        for k in range(720):
            record = decisions.DecisionRecord(ms=now - (720 - k) * 5000, demand=25.0, desired=7,
                                              replicas=7, ready=7, bound_by="demand",
                                              reason="demand 25 / 4 per pod")  # fmt: skip
            fields: Any = record.fields()
            pipe.xadd(decisions.decisions_key(q), fields, maxlen=decisions.MAXLEN,
                      approximate=True)  # fmt: skip
        pipe.zadd(decisions.QUEUES_INDEX, {str(q): now})
        pipe.execute()
        r.xreadgroup("workers", f"pod-{i}-0:1", {keys.ready[1]: ">"}, count=5)
    r.close()


def commands(url: str) -> int:
    r = redis.Redis.from_url(url)
    try:
        stats: Any = r.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
    finally:
        r.close()


async def load(base: str, requests: int, concurrency: int, queues: int) -> dict[str, float]:
    latencies: list[float] = []
    size = 0
    limits = httpx.Limits(max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as c:
        for _ in range(20):
            (await c.get("/api/overview")).raise_for_status()
        todo = requests

        async def one() -> None:
            nonlocal todo, size
            while todo > 0:
                todo -= 1
                started = time.perf_counter()
                response = await c.get("/api/overview")
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200 or len(response.json()["queues"]) != queues:
                    raise SystemExit(f"bad answer: {response.status_code} {response.text[:200]}")
                size = len(response.content)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "max": latencies[-1] * 1000,
        "rps": len(latencies) / wall,
        "bytes": size,
    }


async def computation(url: str, rounds: int) -> dict[str, float]:
    """One overview computation of every queue, uncached, ``rounds`` times in a row."""
    async with AsyncClient(url) as client:
        data = ConsoleData(client)
        names = await data.queue_names()
        for _ in range(3):
            await data.overview(names)
        latencies = []
        for _ in range(rounds):
            started = time.perf_counter()
            await data.overview(names)
            latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {"p50": statistics.median(latencies) * 1000,
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "max": latencies[-1] * 1000}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queues", type=int, default=200)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    with redis_server() as url:
        t0 = time.perf_counter()
        populate(url, args.queues)
        print(f"populated {args.queues} queues in {time.perf_counter() - t0:.1f} s")
        app = create_app(ConsoleConfig(redis_url=url, discover=True))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, http="h11",
                                               log_level="warning", lifespan="on"))  # fmt: skip
        thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        print(f"GET /api/overview, {args.queues} queues (console and load generator in one "
              "process, like one console pod)")  # fmt: skip
        print(f"{'conns':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>7} "
              f"{'redis cmds/req':>15} {'bytes':>8}")  # fmt: skip
        for level in (int(x) for x in args.concurrency.split(",")):
            before = commands(url)
            figures = asyncio.run(load(base, args.requests, level, args.queues))
            per = (commands(url) - before) / (args.requests + 20)  # with the warm-up
            print(f"{level:>5} {figures['p50']:>8.1f} {figures['p99']:>8.1f} "
                  f"{figures['max']:>8.1f} {figures['rps']:>7.1f} {per:>15.0f} "
                  f"{figures['bytes']:>8.0f}")  # fmt: skip
        server.should_exit = True
        thread.join(10)
        figures = asyncio.run(computation(url, 50))
        print(f"one uncached computation of {args.queues} queues: p50 {figures['p50']:.1f} ms, "
              f"p99 {figures['p99']:.1f} ms, max {figures['max']:.1f} ms "
              f"(hiredis: {redis.utils.HIREDIS_AVAILABLE})")  # fmt: skip


if __name__ == "__main__":
    main()
