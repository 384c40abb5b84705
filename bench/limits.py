"""bgq limits benchmark: how exact the queue-wide rate limit is, and what the limiter costs.

    .venv/bin/python bench/limits.py                         # ~2 min, starts its own redis-server
    .venv/bin/python bench/limits.py --rate 200 --seconds 60 --workers 4

1. **Observed rate vs the limit.** ``P:limits`` gets ``rate: {jobs: R, perSeconds: 1}``; enough
   no-op jobs for the whole run are enqueued; ``--workers`` worker processes (``bgq worker``,
   each its own process, concurrency 50) run them. Every job's ``started_ms`` is read back
   from its hash; the observed rate is the number of starts in a ``--seconds`` window that
   begins after ``--warmup`` seconds (the bucket starts full: its first second may run
   up to 2R), divided by the window. The limit holds across processes because the bucket is
   in Redis and taken inside the fetch script.
2. **Cost of the limiter.** One worker (in this process, as bench/throughput.py) processes N
   no-op jobs (50 tenants) with no limits, then with limits that never bind (rate 10^6/s and a
   per-tenant concurrency of 10^5, so every job is checked against the bucket, its tenant's
   concurrency set, and its park list): jobs/s and Redis commands per job (Lua's included) side
   by side, one run, same Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

import bgq
from bgq.control import limits_document, set_limits
from bgq.protocol import QueueName
from bgq.settings import Settings
from bgq.worker import Worker
from throughput import clear, commands, redis_server

RATE_QUEUE = "bench/limits"
COST_QUEUE = "bench/throughput"  # throughput.clear() knows this queue
HERE = Path(__file__).resolve().parent


@bgq.task(name="limits_noop")
async def limits_noop(tenant: str = "") -> None:
    """The benchmarked job: nothing."""


def observed_rate(
    url: str, rate: int, seconds: float, warmup: float, workers: int
) -> dict[str, Any]:
    q = QueueName.parse(RATE_QUEUE)
    r = redis.Redis.from_url(url, decode_responses=True)
    for k in r.scan_iter(match=f"{q.keys.prefix}*", count=1000):
        r.delete(k)
    set_limits(r, q, limits_document(rate=(rate, 1.0)))
    total = int(rate * (seconds + warmup + 10))
    with bgq.Client(url) as client:
        client.enqueue_many(
            q, (bgq.JobSpec("limits_noop", job_id=f"r{i}") for i in range(total)), chunk=2000
        )
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "BGQ_REDIS_URL": url, "BGQ_QUEUE": RATE_QUEUE, "BGQ_HTTP_PORT": "0",
        "BGQ_CONCURRENCY": "50", "BGQ_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    procs = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "bgq"), "worker", "limits"],
            env={**env, "BGQ_POD_NAME": f"bench-{i}"},
        )
        for i in range(workers)
    ]
    started = time.time()
    try:
        deadline = time.monotonic() + 120  # imports are slow on a busy machine
        while int(r.zcard(q.keys.workers)) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                sys.exit("the worker processes did not all start")
            time.sleep(0.1)
        time.sleep(seconds + warmup + 2)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                print(
                    f"worker pid {p.pid} did not exit 60 s after SIGTERM: killed", file=sys.stderr
                )
                p.kill()
                p.wait(10)
    pipe = r.pipeline(transaction=False)
    for i in range(total):
        pipe.hget(q.keys.job(f"r{i}"), "started_ms")
    starts = sorted(int(s) for s in pipe.execute() if s)
    first = starts[0] / 1000
    lo, hi = first + warmup, first + warmup + seconds
    in_window = sum(1 for s in starts if lo <= s / 1000 < hi)
    # the busiest 1-second window anywhere after the warm-up (burst check)
    peak = 0
    j = 0
    window = [s / 1000 for s in starts if s / 1000 >= lo]
    for i, t in enumerate(window):
        while window[j] < t - 1:
            j += 1
        peak = max(peak, i - j + 1)
    by_worker: dict[str, int] = {}
    pipe = r.pipeline(transaction=False)
    for i in range(total):
        pipe.hget(q.keys.job(f"r{i}"), "owner")
    for owner in pipe.execute():
        if owner:
            pod = str(owner).split(":")[0]
            by_worker[pod] = by_worker.get(pod, 0) + 1
    r.close()
    observed = in_window / seconds
    return {
        "limit_per_s": rate,
        "observed_per_s": observed,
        "error_pct": 100 * (observed - rate) / rate,
        "peak_1s": peak,
        "workers_used": len(by_worker),
        "started_total": len(starts),
        "wall_s": time.time() - started,
    }


async def _process(url: str, n: int, concurrency: int, limits: str | None) -> dict[str, float]:
    """bench/throughput.py's one-worker run, with ``P:limits`` written after the queue is
    cleared (so the worker sees it), and a check that the limits were really in place."""
    q = QueueName.parse(COST_QUEUE)
    r = redis.Redis.from_url(url)
    clear(r)
    set_limits(r, q, limits)
    with bgq.Client(url) as client:
        client.enqueue_many(
            q, (bgq.JobSpec("limits_noop", kwargs={"tenant": f"t{i % 50}"}) for i in range(n))
        )
    worker = Worker(
        Settings(redis_url=url, queue=COST_QUEUE, concurrency=concurrency, http_port=0,
                 pod_name="bench"),
        q,
    )  # fmt: skip
    counts = worker.metrics.counts
    c0, t0 = commands(r), time.perf_counter()
    task = asyncio.create_task(worker.run())
    while counts["succeeded"] < n or not worker.settler.empty:
        await asyncio.sleep(0.002)
        if task.done():
            task.result()
            raise SystemExit("worker stopped early")
    dt = time.perf_counter() - t0
    cmds = commands(r) - c0
    worker.request_stop()
    await task
    limited = bool(r.exists(f"{q.keys.prefix}:lim:~rate"))
    if (limits is not None) != limited:
        raise SystemExit(f"limits {'not ' if limits else ''}in effect: the comparison is void")
    r.close()
    return {"per_s": n / dt, "cmds_per_job": cmds / n}


async def limiter_cost(url: str, n: int, concurrency: int) -> dict[str, float]:
    off = await _process(url, n, concurrency, None)
    doc = limits_document(
        rate=(1_000_000, 1.0),
        keys=[{"name": "tenant", "key_from": "kwargs.tenant", "concurrency": 100_000}],
    )
    on = await _process(url, n, concurrency, doc)
    return {
        "off_per_s": off["per_s"],
        "on_per_s": on["per_s"],
        "off_cmds_per_job": off["cmds_per_job"],
        "on_cmds_per_job": on["cmds_per_job"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="use this Redis (its bench queues are deleted)")
    parser.add_argument("--rate", type=int, default=200, help="limit, jobs per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--jobs", type=int, default=20000, help="jobs for the cost run")
    parser.add_argument("--concurrency", type=int, default=200, help="cost run concurrency")
    args = parser.parse_args(argv)

    def run(url: str) -> None:
        res = observed_rate(url, args.rate, args.seconds, args.warmup, args.workers)
        print(
            f"rate limit {res['limit_per_s']} jobs/s, {args.workers} worker processes, "
            f"{args.seconds:g} s window after {args.warmup:g} s warm-up:"
        )
        print(
            f"  observed {res['observed_per_s']:.2f} jobs/s ({res['error_pct']:+.2f} % vs "
            f"the limit), busiest 1 s window {res['peak_1s']} starts, "
            f"{res['workers_used']} workers took jobs"
        )
        cost = asyncio.run(limiter_cost(url, args.jobs, args.concurrency))
        print(f"limiter cost, 1 worker, {args.jobs} no-op jobs, concurrency {args.concurrency}:")
        print(
            f"  limits off {cost['off_per_s']:.0f} jobs/s ({cost['off_cmds_per_job']:.1f} "
            f"Redis cmds/job); limits on (never binding) {cost['on_per_s']:.0f} jobs/s "
            f"({cost['on_cmds_per_job']:.1f} cmds/job): "
            f"{cost['on_per_s'] / cost['off_per_s']:.2f}x"
        )

    if args.redis_url:
        run(args.redis_url)
    else:
        with redis_server() as url:
            run(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
