"""Enqueue the demo's burst from inside the cluster, as an in-cluster service would.

Half of the jobs go through the Python client (``bgq.Client.enqueue_many``: one pipelined round
trip to Redis), the other half through the HTTP gateway (``POST .../jobs:batch`` with plain
``urllib``, as a service in any language would). Every job gets a caller job id
(``<run>-<n>``), so a retried request never duplicates a job. Prints one JSON line: the run,
the job ids and how many went each way.

    python3 -m burst --queue bgq-demo/demo --run r1 --count 200 \\
        --gateway http://bgq-gateway.bgq-demo.svc:8000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import bgq


def plan(run: str, count: int, scenario: str) -> list[dict[str, Any]]:
    """The jobs of one run: a seeded mix, so a run id always means the same jobs."""
    rnd = random.Random(run)
    jobs = []
    for i in range(count):
        args: list[Any]
        job_id = f"{run}-{i:04d}"
        if scenario == "drain":
            task, args = "export_archive", [i, round(rnd.uniform(12.0, 20.0), 2)]
        elif i % 10 == 3:  # one in ten: a flaky downstream, fails once, the retry succeeds
            task, args = "sync_inventory", [f"sku-{i}", round(rnd.uniform(1.0, 5.0), 2), True]
        elif i % 10 == 7:  # one in ten: CPU-bound
            task, args = "render_report", [i, rnd.randrange(150_000, 300_000)]
        else:
            roll = rnd.random()
            if roll < 0.55:
                task, args = "send_email", [f"user{i}@example.com", round(rnd.uniform(0.1, 0.6), 2)]
            elif roll < 0.85:
                task, args = "resize_image", [i, round(rnd.uniform(0.5, 2.0), 2)]
            else:
                task, args = "sync_inventory", [f"sku-{i}", round(rnd.uniform(1.0, 5.0), 2), False]
        jobs.append({"task": task, "args": args, "job_id": job_id})
    return jobs


def via_gateway(base: str, queue: str, jobs: list[dict[str, Any]], deadline: float) -> int:
    """POST the jobs as one batch; retries (same job ids: idempotent) until ``deadline``."""
    namespace, name = queue.split("/", 1)
    url = f"{base.rstrip('/')}/v1/queues/{namespace}/{name}/jobs:batch"
    body = json.dumps({"jobs": jobs}).encode()
    while True:
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = json.loads(response.read())
                return len(answer.get("jobs", jobs))
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                raise SystemExit(
                    f"gateway refused the batch: {exc.code} {exc.read()[:500]!r}") from exc
            if time.monotonic() > deadline:
                raise SystemExit(f"gateway at {url} unreachable: {exc}") from exc
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", required=True, help="namespace/name")
    parser.add_argument("--run", required=True, help="run id: prefix of every job id")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--scenario", choices=["burst", "drain"], default="burst")
    parser.add_argument("--gateway", default="", help="gateway base URL; empty: client only")
    args = parser.parse_args(argv)

    jobs = plan(args.run, args.count, args.scenario)
    by_client = jobs[0::2] if args.gateway else jobs
    by_gateway = jobs[1::2] if args.gateway else []
    started = time.time()
    with bgq.Client(os.environ.get("BGQ_REDIS_URL", "redis://localhost:6379/0")) as client:
        client.enqueue_many(args.queue, [
            bgq.JobSpec(task=j["task"], args=j["args"], job_id=j["job_id"]) for j in by_client])
    sent_gateway = 0
    for start in range(0, len(by_gateway), 500):
        sent_gateway += via_gateway(args.gateway, args.queue, by_gateway[start:start + 500],
                                    time.monotonic() + 60)
    print(json.dumps({
        "run": args.run, "queue": args.queue, "ids": [j["job_id"] for j in jobs],
        "via_client": len(by_client), "via_gateway": sent_gateway,
        "seconds": round(time.time() - started, 3),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
