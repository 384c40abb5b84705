"""The autoscaler's enqueue -> decision path with 1,000 queues, no cluster (issue 12).

Usage: ``.venv/bin/python bench/operator_local.py [--queues 1000] [--endpoints 2]
[--burst-queues 50] [--samples 60] [--api-ms 10,40] [--api-slots 2] [--event-cpu-ms 3]
[--profile FILE]``.

The operator's reconcile and autoscaler run in this process against two real redis-servers it
starts on 127.0.0.1 and a fake Kubernetes API in memory that gives every write a latency
(``--api-ms``: uniform between the two figures) and serves at most ``--api-slots`` requests at
once (an API server on a shared 2-core machine: writes queue behind each other), and burns
``--event-cpu-ms`` of this process's CPU per write (a stand-in for what the watch event of that
write costs kopf in the real operator: a guess, as the latency is). A producer *process*
enqueues into ``--burst-queues`` queues (one job every 20 ms, round robin, as
``bench/operator_scale.py`` does; their jobs are never run, so they scale up to maxReplicas 3
and stay busy), and ``--samples`` times a job goes into a queue at rest at 0 replicas; each
sample is timed stage by stage on one clock:

    enqueue -> wake received (bgq:wake) -> tick start -> demand read -> scale PATCH sent -> done

It also reports the API requests by kind during the burst phase and this process's CPU. The
real-cluster figure is ``bench/operator_scale.py``'s; this one is for finding where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

import bgq
from bgq_operator import autoscaler as autoscaler_mod
from bgq_operator.autoscaler import Autoscaler, EndpointLoop
from bgq_operator.reconcile import Context, reconcile

PRODUCER = """
import sys, time, bgq
urls, names = sys.argv[1].split(","), sys.argv[2].split(",")
clients = [bgq.Client(u) for u in urls]
i = 0
while True:
    e, q = names[i % len(names)].split("@")
    clients[int(e)].enqueue(q, "noop")
    i += 1
    time.sleep(0.02)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_servers(count: int, workdir: Path) -> Iterator[list[str]]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    procs, urls = [], []
    try:
        for i in range(count):
            port = free_port()
            procs.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir),
                 "--logfile", str(workdir / f"r{i}.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            ))  # fmt: skip
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while True:
                try:
                    if redis.Redis.from_url(url).ping():
                        break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            urls.append(url)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def burn(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


class FakeApi:
    """Namespaced Deployments and status in memory; writes take time and API-server slots."""

    def __init__(
        self, latency_ms: tuple[float, float], slots: int, event_cpu_ms: float,
        slow_setup: bool = False,
    ) -> None:
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.latency = latency_ms
        self.slots = asyncio.Semaphore(slots)
        self.event_cpu_ms = event_cpu_ms
        self.requests: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.scale_seen = asyncio.Event()
        self.scaled: dict[tuple[str, str], list[tuple[float, float, int, int]]] = {}
        """Per Deployment: (sent, done, replicas, requests in flight when sent) of each scale
        PATCH (monotonic)."""
        self.rng = random.Random(1)
        self.slow = slow_setup
        """Latency and slots only once set (unless --timed-setup, the 1,000 reconciles at
        start-up are not slowed down)."""
        self.last_write = time.monotonic()

    async def _write(self, kind: str) -> None:
        self.requests[kind] += 1
        self.last_write = time.monotonic()
        if not self.slow:
            return
        self.in_flight[kind] += 1
        try:
            async with self.slots:
                await asyncio.sleep(self.rng.uniform(*self.latency) / 1000)
        finally:
            self.in_flight[kind] -= 1
        if self.event_cpu_ms:  # the watch event this write causes, handled by kopf
            asyncio.get_running_loop().call_soon(burn, self.event_cpu_ms)

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.deployments.get((namespace, name))
        return dict(found) if found else None

    async def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        body["metadata"].update(generation=1, resourceVersion="1")
        self.deployments[(namespace, body["metadata"]["name"])] = body
        return body

    async def replace_deployment(
        self, namespace: str, body: dict[str, Any], dry_run: bool = False
    ) -> dict[str, Any]:
        return self.deployments[(namespace, body["metadata"]["name"])]

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        sent, ahead = time.monotonic(), sum(self.in_flight.values())
        await self._write("scale")
        dep = self.deployments[(namespace, name)]
        dep["spec"]["replicas"] = replicas
        dep["metadata"]["generation"] += 1
        self.scaled.setdefault((namespace, name), []).append(
            (sent, time.monotonic(), replicas, ahead)
        )
        self.scale_seen.set()
        return {"metadata": {"generation": dep["metadata"]["generation"]}}

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.requests["list-pods"] += 1
        return []

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, Any]) -> None:
        await self._write("annotate")

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def patch_queue_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        await self._write("status")
        return {}

    async def post_event(self, involved: Any, type_: str, reason: str, message: str) -> None:
        await self._write("event")


class Stages:
    """Timestamps of the sampled queues' path through the autoscaler (monotonic)."""

    def __init__(self) -> None:
        self.watched: set[str] = set()
        self.wake: dict[str, float] = {}
        self.tick: dict[str, float] = {}
        self.read: dict[str, float] = {}

    def install(self) -> None:
        stages = self
        wake_for, tick = EndpointLoop.wake_for, EndpointLoop.tick
        read_demand = autoscaler_mod.read_demand  # type: ignore[attr-defined]

        def timed_wake_for(loop: EndpointLoop, name: str | None, *a: Any, **k: Any) -> None:
            if name in stages.watched:
                stages.wake.setdefault(name, time.monotonic())
            wake_for(loop, name, *a, **k)

        async def timed_tick(loop: EndpointLoop, woken: Any = None, *a: Any, **k: Any) -> None:
            for name in stages.watched & set(woken or ()):
                stages.tick.setdefault(name, time.monotonic())
            await tick(loop, woken, *a, **k)

        async def timed_read(client: Any, names: Any, *a: Any, **k: Any) -> Any:
            out = await read_demand(client, names, *a, **k)
            for name in stages.watched & set(names):
                stages.read.setdefault(name, time.monotonic())
            return out

        EndpointLoop.wake_for = timed_wake_for  # type: ignore[method-assign,assignment]
        EndpointLoop.tick = timed_tick  # type: ignore[method-assign,assignment]
        autoscaler_mod.read_demand = timed_read  # type: ignore[attr-defined,assignment]


STAGES = [
    ("wake", "bgq:wake message received"),
    ("tick", "its tick started"),
    ("read", "its demand read"),
    ("sent", "scale PATCH sent"),
    ("done", "scale PATCH done (the bench's figure)"),
]


def spec(url: str) -> dict[str, Any]:
    return {
        "redis": {"url": url},
        "worker": {"image": "img:1", "tasksModule": "app.tasks", "concurrency": 10},
        "scaling": {"minReplicas": 0, "maxReplicas": 3},
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def run(args: argparse.Namespace, urls: list[str]) -> str:
    lo, hi = (float(x) for x in args.api_ms.split(","))
    api = FakeApi((lo, hi), args.api_slots, args.event_cpu_ms, args.timed_setup)
    ctx = Context(kube=api)  # type: ignore[arg-type]
    scaler = Autoscaler(ctx)
    ctx.on_change = lambda: None
    stages = Stages()
    stages.install()
    queues = [(f"ns{i % args.namespaces}", f"q{i:04d}", i % len(urls)) for i in range(args.queues)]
    t0 = time.monotonic()
    sem = asyncio.Semaphore(32)

    async def one(ns: str, name: str, e: int) -> None:
        async with sem:
            await reconcile(ctx, namespace=ns, name=name, uid=name, generation=1,
                            spec=spec(urls[e]))  # fmt: skip

    await asyncio.gather(*(one(*q) for q in queues))
    ctx.on_change = scaler.refresh
    scaler.refresh()
    while time.monotonic() - api.last_write < args.settle_seconds:  # noqa: ASYNC110
        await asyncio.sleep(0.1)  # until the first decisions are written
    setup_s = time.monotonic() - t0
    api.slow = True

    rng = random.Random(7)
    shuffled = queues[:]
    rng.shuffle(shuffled)
    burst, fresh = shuffled[: args.burst_queues], shuffled[args.burst_queues :]
    producer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PRODUCER, ",".join(urls),
        ",".join(f"{e}@{ns}/{n}" for ns, n, e in burst),
    )  # fmt: skip
    clients = [bgq.AsyncClient(u) for u in urls]
    api.requests.clear()
    profiler = cProfile.Profile() if args.profile else None
    try:
        await asyncio.sleep(args.warm_seconds)  # the busy queues scale up and settle
        requests0 = Counter(api.requests)
        cpu0, w0 = time.process_time(), time.monotonic()
        if profiler:
            profiler.enable()
        rows: list[dict[str, float]] = []
        for ns, name, e in fresh[: args.samples]:
            qname = f"{ns}/{name}"
            stages.watched.add(qname)
            t = time.monotonic()
            await clients[e].enqueue(qname, "noop")
            deadline = time.monotonic() + 10
            while not api.scaled.get((ns, f"bgq-{name}")) and time.monotonic() < deadline:
                api.scale_seen.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(api.scale_seen.wait(), deadline - time.monotonic())
            got = api.scaled.get((ns, f"bgq-{name}"))
            if not got:
                print(f"missed {qname}", file=sys.stderr)
                continue
            sent, done, _, ahead = got[0]
            rows.append({"ahead": ahead,
                "wake": stages.wake.get(qname, sent) - t, "tick": stages.tick.get(qname, sent) - t,
                "read": stages.read.get(qname, sent) - t, "sent": sent - t, "done": done - t,
            })  # fmt: skip
            await asyncio.sleep(args.gap)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        cpu1, w1 = time.process_time(), time.monotonic()
        requests = api.requests - requests0
    finally:
        producer.terminate()
        await producer.wait()
        for c in clients:
            await c.close()
        await scaler.stop()
        await ctx.redis.close()
    span = w1 - w0
    lines = [
        f"{args.queues} queues over {args.namespaces} namespaces and {len(urls)} redis-servers, "
        f"{args.burst_queues} busy queues, fake API {args.api_ms} ms/write, "
        f"{args.api_slots} slots, {args.event_cpu_ms} ms CPU per write event; "
        f"setup {setup_s:.1f} s",
        f"burst phase {span:.1f} s: CPU {100 * (cpu1 - cpu0) / span:.1f} % of a core; "
        "API writes/s: " + ", ".join(f"{k} {v / span:.1f}" for k, v in sorted(requests.items())),
        f"{len(rows)} samples, ms from the enqueue:   p50    p95    max",
    ]
    queued = [r["ahead"] for r in rows]
    for stage, label in STAGES:
        values = [r[stage] * 1000 for r in rows]
        if values:
            lines.append(
                f"  {label:<38} {statistics.median(values):6.1f} {pct(values, 0.95):6.1f} "
                f"{max(values):6.1f}"
            )
    if queued:
        lines.append(f"  API requests in flight when its PATCH was sent: p50 "
                     f"{statistics.median(queued):.0f}, p95 {pct(queued, 0.95):.0f}, "
                     f"max {max(queued):.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queues", type=int, default=1000)
    p.add_argument("--namespaces", type=int, default=10)
    p.add_argument("--endpoints", type=int, default=2)
    p.add_argument("--burst-queues", type=int, default=50)
    p.add_argument("--samples", type=int, default=60)
    p.add_argument("--gap", type=float, default=0.3, help="seconds between samples")
    p.add_argument("--api-ms", default="10,40")
    p.add_argument("--api-slots", type=int, default=2)
    p.add_argument("--event-cpu-ms", type=float, default=3.0)
    p.add_argument("--settle-seconds", type=float, default=2,
                   help="quiet API seconds that end the start-up")
    p.add_argument("--warm-seconds", type=float, default=1)
    p.add_argument("--timed-setup", action="store_true",
                   help="the API latency and slots apply to the start-up too")
    p.add_argument("--profile", help="write a cProfile of the sample phase here")
    args = p.parse_args(argv)
    with redis_servers(args.endpoints, Path(tempfile.mkdtemp(prefix="bgq-oplocal-"))) as urls:
        print(asyncio.run(run(args, urls)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
