"""bgq and KEDA + HPA, live, side by side on the real test cluster, driven by the same traces.

Usage (root; the cluster up, KEDA built): ``make bench-keda`` or
``.venv/bin/python bench/keda_live.py [--trace spike ...] [--systems bgq keda keda-tuned]
[--sequential] [--out FILE]``.

What runs, per trace, in one namespace per system and against ONE redis-server on the host:

* **bgq**: a ``BackgroundQueue`` (scaling defaults: scaleDownDelaySeconds 30,
  idleSecondsBeforeZero 60) and the bgq operator as a host process watching that namespace.
* **keda**: the same worker Deployment (built by ``bgq_operator.manifests.build_deployment`` from
  the same spec, so same image, tasks, concurrency, probes, drain and grace) with no bgq operator,
  scaled by a KEDA ``ScaledObject`` with KEDA's defaults: the ``redis-streams`` scaler on the
  queue's stream and consumer group with ``lagCount`` = concurrency, pollingInterval 30,
  cooldownPeriod 300, minReplicaCount 0, the HPA's default behaviour.
* **keda-tuned**: the same with pollingInterval 5, cooldownPeriod 60 and a 60 s scale-down
  stabilisation window.

KEDA itself runs in the cluster from its own manifests (``hack/cluster/keda up``, started and
removed by this script unless ``--keep-keda``). The traces are bench/autoscale_sim.py's, shortened
(fewer jobs, a cut-off, optionally compressed time: ``SHORTEN``) to fit about 10 minutes per
system on a 2-core node. The driver enqueues every job into every system's queue at the same
moment (``--sequential`` runs the systems one after another instead). Jobs are
``e2e_tasks.sleep(duration)``.

Per trace and system: replica-seconds (pods existing x time, starting and terminating pods
included, from a pod watch), p50/p95/max enqueue -> the job's first real start (recorded by the
task itself: a prefetched job is fetched, and marked running in its hash, before a slot frees), jobs
interrupted by scale-in (started more than once, see below),
time from the first enqueue to the first Ready pod, time from the last job's end to zero pods,
replica changes (``spec.replicas`` writes, from a Deployment watch), peak pods, unfinished jobs.
Jobs are ``e2e_tasks.counted_sleep``, which counts each start of a job in a Redis hash: a job
started more than once was interrupted.

KEDA's trigger: ``--keda-metric streamLength`` (default) scales on ``XLEN`` of the stream, which
for bgq is backlog + in flight (bgq deletes an entry when its job is acked). ``lagCount`` (what a
Streams user would pick first) does not work on bgq's streams: after an acked entry is deleted,
Redis can no longer compute the group's lag and ``XINFO GROUPS`` reports it as nil, which KEDA's
go-redis client turns into -1; ``--keda-metric lagCount`` runs it anyway to show the effect.
The simulator runs the same shortened traces with the cluster's measured pod start time, and its
predictions are printed below the live table (calibration). A markdown report is printed and
written to ``--out`` (default bench/results/keda_live.md).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.e2e.kube import (  # noqa: E402
    Cluster,
    HostRedis,
    NetnsProcess,
    build_image,
    load_cluster,
    stop_process,
)

import autoscale_sim as sim  # noqa: E402  (bench/ is on sys.path when run as a script)
import bgq  # noqa: E402
from bgq_operator.manifests import build_deployment, selector_string  # noqa: E402
from bgq_operator.spec import parse_spec  # noqa: E402

HACK = REPO / "hack" / "cluster"
CRD = REPO / "crds" / "backgroundqueues.bgq.dev.yaml"
SYSTEMS = ("bgq", "keda", "keda-tuned")
QUEUE = "jobs"
REDIS_PORT = 7710  # this benchmark's port range: 7700-7799


@dataclass(frozen=True)
class Shorten:
    """How a simulator trace is cut down for the live run."""

    fraction: float  # keep this share of the jobs (seeded)
    time_scale: float  # multiply arrival times and durations
    until: float | None  # drop arrivals after this (seconds, after scaling)


SHORTEN = {
    "spike": Shorten(0.2, 1.0, None),  # 100 jobs of 5-15 s in 2 s
    "sawtooth": Shorten(0.25, 1.0, 370),  # 3 teeth, rate 0 -> 5 jobs/s
    "long": Shorten(0.25, 0.25, None),  # ~4 jobs of 2.5-5 min + a 2 s trickle, 7.5 min
    "bursts": Shorten(0.2, 1.0, 600),  # 10 min of bursts of 10-80 jobs
}


def live_trace(key: str, seed: int) -> sim.Trace:
    """The simulator's trace ``key`` for ``seed``, shortened by ``SHORTEN[key]``."""
    full = sim.TRACES[key](random.Random(f"{seed}:{key}"))
    cut = SHORTEN[key]
    rng = random.Random(f"{seed}:{key}:live")
    jobs = [(a * cut.time_scale, d * cut.time_scale) for a, d in full.jobs
            if rng.random() < cut.fraction]
    if cut.until is not None:
        jobs = [(a, d) for a, d in jobs if a <= cut.until] or jobs[:1]
    shift = jobs[0][0] - 5.0  # the first job 5 s after the start
    jobs = [(round(a - shift, 3), round(d, 3)) for a, d in jobs]
    horizon = jobs[-1][0] + max(d for _, d in jobs) + 480  # KEDA's cooldown is 300 s
    desc = (f"{full.description}; live: {cut.fraction:.0%} of the jobs"
            + (f", time x{cut.time_scale:g}" if cut.time_scale != 1 else "")
            + (f", arrivals until {cut.until:.0f}s" if cut.until else ""))
    return sim.Trace(full.name, desc, tuple(jobs), horizon)


# ------------------------------------------------------------------------------- watches


class Watch:
    """``kubectl get --watch`` in a thread; every output line with its arrival time."""

    def __init__(self, cluster: Cluster, *args: str) -> None:
        self.lines: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [str(cluster.kubectl_bin), "--kubeconfig", str(cluster.kubeconfig), "get", *args,
             "--watch"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                with self.lock:
                    self.lines.append((time.time(), line.strip()))

    def snapshot(self) -> list[tuple[float, str]]:
        with self.lock:
            return list(self.lines)

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


POD_FORMAT = ('jsonpath={.type}|{.object.metadata.name}|{.object.metadata.deletionTimestamp}|'
              '{.object.status.conditions[?(@.type=="Ready")].status}{"\\n"}')


@dataclass
class PodTimeline:
    """Per pod: first seen, first Ready, gone (DELETED event), from a pod watch."""

    seen: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    gone: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, lines: list[tuple[float, str]]) -> PodTimeline:
        tl = cls()
        for t, line in lines:
            kind, name, _deleting, ready = ([*line.split("|"), "", "", "", ""])[:4]
            tl.seen.setdefault(name, t)
            if ready == "True":
                tl.ready.setdefault(name, t)
            if kind == "DELETED":
                tl.gone.setdefault(name, t)
        return tl

    def alive(self, t: float) -> int:
        return sum(1 for n, s in self.seen.items() if s <= t and self.gone.get(n, math.inf) > t)

    def pod_seconds(self, start: float, end: float) -> float:
        return sum(max(0.0, min(self.gone.get(n, end), end) - max(s, start))
                   for n, s in self.seen.items())


# ------------------------------------------------------------------------------- systems


def worker_spec(redis_url: str, image: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url},
        "worker": {"image": image, "imagePullPolicy": "Never", "tasksModule": "e2e_tasks",
                   "concurrency": args.concurrency,
                   "resources": {"requests": {"cpu": "10m", "memory": "48Mi"}}},
        "jobs": {"resultTtlSeconds": 7200},
        "scaling": {"minReplicas": 0, "maxReplicas": args.max_replicas},
    }


def scaled_object(namespace: str, redis_address: str, args: argparse.Namespace,
                  tuned: bool) -> dict[str, Any]:
    queue = bgq.QueueName.parse(f"{namespace}/{QUEUE}")
    metadata = {
        "address": redis_address,
        "stream": queue.keys.ready[1],  # band 1: "normal", where enqueue puts jobs
    }
    if args.keda_metric == "lagCount":
        metadata |= {"consumerGroup": "workers", "lagCount": str(args.concurrency)}
    else:  # no consumerGroup: XLEN, i.e. backlog + in flight on a bgq stream
        metadata |= {"streamLength": str(args.concurrency)}
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": f"bgq-{QUEUE}"},
        "minReplicaCount": 0,
        "maxReplicaCount": args.max_replicas,
        "triggers": [{"type": "redis-streams", "metadata": metadata}],
    }
    if tuned:
        spec |= {"pollingInterval": 5, "cooldownPeriod": 60, "advanced": {
            "horizontalPodAutoscalerConfig": {"behavior": {
                "scaleDown": {"stabilizationWindowSeconds": 60}}}}}
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": QUEUE, "namespace": namespace}, "spec": spec}


@dataclass
class Run:
    """One system in its namespace for one trace: setup, watches, results."""

    system: str
    namespace: str
    queue: str
    job_ids: list[str] = field(default_factory=list)
    operator: NetnsProcess | None = None
    pods: Watch | None = None
    replicas: Watch | None = None
    started: float = 0.0
    ended: float = 0.0


def setup(cluster: Cluster, redis: HostRedis, image: str, system: str, trace_key: str,
          args: argparse.Namespace, logdir: Path) -> Run:
    ns = f"kl-{trace_key}-{system}-{secrets.token_hex(2)}"
    cluster.kubectl("create", "namespace", ns)
    cluster.wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", ns,
                                             check=False).returncode == 0, 30, "default SA")
    run = Run(system, ns, f"{ns}/{QUEUE}")
    spec = worker_spec(redis.url_for_pods, image, args)
    if system == "bgq":
        cluster.apply({"apiVersion": "bgq.dev/v1alpha1", "kind": "BackgroundQueue",
                       "metadata": {"name": QUEUE, "namespace": ns}, "spec": spec})
        log = (logdir / f"operator-{ns}.log").open("wb")
        # inside the cluster's network namespace: it reads Redis at the pods' address
        run.operator = cluster.netns_process(
            [sys.executable, "-m", "bgq_operator", "--namespace", ns, "--http-host",
             "127.0.0.1", "--http-port", "0"],
            env={"BGQ_LOG_LEVEL": "INFO"}, stdout=log, stderr=subprocess.STDOUT)
        cluster.wait_for(lambda: cluster.kubectl("get", "deployment", f"bgq-{QUEUE}", "-n", ns,
                                                 check=False).returncode == 0,
                         60, "the bgq worker Deployment")
    else:
        deployment = build_deployment(QUEUE, ns, "", parse_spec(spec), 0)
        del deployment["metadata"]["ownerReferences"]
        cluster.apply(deployment)
        address = redis.url_for_pods.removeprefix("redis://").rsplit("/", 1)[0]
        cluster.apply(scaled_object(ns, address, args, tuned=system == "keda-tuned"))
        cluster.wait_for(lambda: _keda_ready(cluster, ns), 90, f"ScaledObject Ready in {ns}")
    run.pods = Watch(cluster, "pods", "-n", ns, "-l", selector_string(QUEUE),
                     "--output-watch-events", "-o", POD_FORMAT)
    run.replicas = Watch(cluster, "deployment", f"bgq-{QUEUE}", "-n", ns, "-o",
                         'jsonpath={.spec.replicas}{"\\n"}')
    return run


def _keda_ready(cluster: Cluster, ns: str) -> bool:
    so = cluster.get_json("scaledobject", QUEUE, "-n", ns)
    conds = {c["type"]: c["status"] for c in so.get("status", {}).get("conditions", [])}
    hpa = cluster.kubectl("get", "hpa", f"keda-hpa-{QUEUE}", "-n", ns, check=False)
    return conds.get("Ready") == "True" and hpa.returncode == 0


def teardown(cluster: Cluster, run: Run) -> None:
    for w in (run.pods, run.replicas):
        if w is not None:
            w.stop()
    if run.operator is not None:
        stop_process(run.operator, 15)
    cluster.kubectl("delete", "scaledobject", "--all", "-n", run.namespace, "--timeout=60s",
                    check=False, timeout=90)
    cluster.kubectl("delete", "pods", "--all", "-n", run.namespace, "--grace-period=0",
                    "--force", "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", run.namespace, "--wait=false", check=False)


# ------------------------------------------------------------------------------- driving


def drive(trace: sim.Trace, runs: list[Run], client: bgq.Client, t0: float) -> None:
    """Enqueue every job of the trace at its arrival time into every run's queue."""
    groups = itertools.groupby(trace.jobs, key=lambda j: round(j[0], 2))
    for arrival, group in groups:
        durations = [d for _, d in group]
        delay = t0 + arrival - time.time()
        if delay > 0:
            time.sleep(delay)
        for run in runs:
            specs = [bgq.JobSpec("counted_sleep", (d, tally_key(run))) for d in durations]
            run.job_ids.extend(j.id for j in client.enqueue_many(run.queue, specs))


def tally_key(run: Run) -> str:
    """The hash in which ``e2e_tasks.counted_sleep`` counts each job's starts."""
    return f"keda-live:starts:{run.namespace}"


def settled(run: Run, client: bgq.Client) -> bool:
    """Every job succeeded, the Deployment is at 0 and no pod is left."""
    q = bgq.QueueName.parse(run.queue)
    done = int(client.redis.hget(q.keys.stats, "succeeded") or 0)
    if done < len(run.job_ids):
        return False
    assert run.pods is not None and run.replicas is not None
    reps = run.replicas.snapshot()
    tl = PodTimeline.parse(run.pods.snapshot())
    return bool(reps) and reps[-1][1] == "0" and tl.alive(time.time()) == 0


def wait_settled(runs: list[Run], client: bgq.Client, deadline: float) -> None:
    pending = list(runs)
    while pending and time.time() < deadline:
        for run in list(pending):
            if settled(run, client):
                run.ended = time.time()
                pending.remove(run)
        time.sleep(2)
    for run in pending:
        run.ended = time.time()  # timed out: results say "never" / unfinished


# ------------------------------------------------------------------------------- results


@dataclass
class Result:
    system: str
    replica_seconds: float
    p50_wait: float
    p95_wait: float
    max_wait: float
    interrupted: int
    first_ready: float | None
    idle_tail: float | None
    replica_changes: int
    direction_changes: int
    peak: int
    unfinished: int
    start_delay: float | None  # median pod seen -> Ready
    replica_timeline: list[tuple[float, int]] = field(default_factory=list)
    """``spec.replicas`` changes, seconds after the first enqueue (from the Deployment watch)."""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]


def collect(run: Run, client: bgq.Client) -> Result:
    q = bgq.QueueName.parse(run.queue)
    pipe = client.redis.pipeline(transaction=False)
    for jid in run.job_ids:
        pipe.hmget(q.keys.job(jid), "enqueued_ms", "started_ms", "finished_ms", "token",
                   "state")
    rows = pipe.execute()
    starts_of = _int_hash(client, tally_key(run))
    first_run = _int_hash(client, f"{tally_key(run)}:first")
    interrupted = sum(1 for jid in run.job_ids if starts_of.get(jid, 0) > 1)
    waits, finished, unfinished = [], [], 0
    first_enqueue = math.inf
    for jid, (enq, start, fin, _token, state) in zip(run.job_ids, rows, strict=True):
        first_enqueue = min(first_enqueue, int(enq or 0) / 1000 or math.inf)
        began = first_run.get(jid) or (int(start) if start else 0)  # ran, else fetched
        if began:
            waits.append((began - int(enq)) / 1000)
        if (state.decode() if isinstance(state, bytes) else state) != "succeeded":
            unfinished += 1
        elif fin:
            finished.append(int(fin) / 1000)
    assert run.pods is not None and run.replicas is not None
    tl = PodTimeline.parse(run.pods.snapshot())
    reps = [(t, int(v)) for t, v in run.replicas.snapshot() if v.isdigit()]
    values = [v for _, v in reps]
    values = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
    deltas = [b - a for a, b in itertools.pairwise(values)]
    signs = [d > 0 for d in deltas if d]
    last_done = max(finished, default=None)
    zero_at = None
    if last_done is not None and not unfinished:
        events = sorted({*tl.gone.values(), *(t for t, _ in reps)})
        zero_at = next((t for t in events if t >= last_done and tl.alive(t) == 0
                        and _replicas_at(reps, t) == 0), None)
    first_ready = min(tl.ready.values(), default=None)
    starts = [tl.ready[n] - tl.seen[n] for n in tl.ready]
    return Result(
        system=run.system,
        replica_seconds=tl.pod_seconds(run.started, run.ended),
        p50_wait=percentile(waits, 0.5), p95_wait=percentile(waits, 0.95),
        max_wait=max(waits, default=math.nan), interrupted=interrupted,
        first_ready=None if first_ready is None else first_ready - first_enqueue,
        idle_tail=None if zero_at is None or last_done is None else zero_at - last_done,
        replica_changes=max(0, len(values) - 1),
        direction_changes=sum(1 for a, b in itertools.pairwise(signs) if a != b),
        peak=max(values, default=0), unfinished=unfinished,
        start_delay=statistics.median(starts) if starts else None,
        replica_timeline=_timeline(reps, first_enqueue),
    )


def _int_hash(client: bgq.Client, key: str) -> dict[str, int]:
    """A Redis hash of integers (``counted_sleep``'s tallies) as {field: value}."""
    return {(k.decode() if isinstance(k, bytes) else k): int(v)
            for k, v in client.redis.hgetall(key).items()}


def _timeline(reps: list[tuple[float, int]], t0: float) -> list[tuple[float, int]]:
    out: list[tuple[float, int]] = []
    for t, v in reps:
        if not out or out[-1][1] != v:
            out.append((round(t - t0, 2), v))
    return out


def _replicas_at(reps: list[tuple[float, int]], t: float) -> int:
    value = reps[0][1] if reps else 0
    for ts, v in reps:
        if ts > t:
            break
        value = v
    return value


def fmt(v: float | None) -> str:
    if v is None:
        return "never"
    return "-" if math.isnan(v) else f"{v:.1f}s"


def live_table(rows: list[tuple[sim.Trace, list[Result]]]) -> str:
    out = ["| trace | system | replica-s | p50 wait | p95 wait | max wait | interrupted | "
           "first pod ready | last job -> zero | replica changes | direction changes | "
           "peak pods | unfinished |", "|" + "---|" * 13]
    for trace, results in rows:
        out.extend(
            f"| {trace.name} | {r.system} | {r.replica_seconds:.0f} | {fmt(r.p50_wait)} | "
            f"{fmt(r.p95_wait)} | {fmt(r.max_wait)} | {r.interrupted} | {fmt(r.first_ready)} | "
            f"{fmt(r.idle_tail)} | {r.replica_changes} | {r.direction_changes} | {r.peak} | "
            f"{r.unfinished} |" for r in results)
    return "\n".join(out)


SIM_NAMES = {"bgq": "bgq", "keda": "KEDA+HPA", "keda-tuned": "KEDA+HPA tuned"}


def poll_phases(trace: sim.Trace, results: list[Result]) -> dict[str, float]:
    """When each live KEDA run's first active poll came (trace time): its first pod was Ready
    ``first_ready`` after the first enqueue, a pod start (``start_delay``) after KEDA's 0 -> 1.
    The phase of KEDA's polling loop is chance (up to ``pollingInterval``) and moves every
    figure of a short trace, so the simulator takes the live one instead of its own draw."""
    phases = {}
    for r in results:
        if r.system != "bgq" and r.first_ready is not None and r.start_delay is not None:
            phases[SIM_NAMES[r.system]] = trace.jobs[0][0] + max(0.0, r.first_ready
                                                                   - r.start_delay)
    return phases


def hpa_phases(trace: sim.Trace, results: list[Result]) -> dict[str, float]:
    """When each live KEDA run's HPA first changed the replicas (its first change after KEDA's
    0 -> 1): the phase of the HPA's 15 s sync loop, chance like KEDA's polling."""
    phases = {}
    for r in results:
        ups = [t for (_, before), (t, v) in itertools.pairwise(r.replica_timeline)
               if before >= 1 and v != before]
        if r.system != "bgq" and ups:
            phases[SIM_NAMES[r.system]] = trace.jobs[0][0] + ups[0]
    return phases


def sim_table(rows: list[tuple[sim.Trace, list[Result]]], args: argparse.Namespace) -> str:
    """The simulator on the same shortened traces, next to the live replica-seconds."""
    out = ["| trace | system | live replica-s | sim replica-s | sim/live | live p95 wait | "
           "sim p95 wait | live interrupted | sim interrupted |", "|" + "---|" * 9]
    for trace, results in rows:
        delays = [r.start_delay for r in results if r.start_delay is not None]
        ns = argparse.Namespace(
            seed=args.seed, max_replicas=args.max_replicas, concurrency=args.concurrency,
            start_delay=statistics.median(delays) if delays else 2.0, grace=30.0, dt=0.1,
            tuned=True, keda_metric="xlen" if args.keda_metric == "streamLength" else "llen",
            keda_poll_at=poll_phases(trace, results), keda_hpa_at=hpa_phases(trace, results))
        predicted = {r.system: r for r in sim.simulate(trace, ns)}
        for r in results:
            p = predicted[SIM_NAMES[r.system]]
            ratio = p.replica_seconds / r.replica_seconds if r.replica_seconds else math.nan
            out.append(f"| {trace.name} | {r.system} | {r.replica_seconds:.0f} | "
                       f"{p.replica_seconds:.0f} | {ratio:.2f} | {fmt(r.p95_wait)} | "
                       f"{fmt(p.p95_wait)} | {r.interrupted} | {p.interrupted} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------- main


def run_trace(cluster: Cluster, redis: HostRedis, image: str, key: str,
              args: argparse.Namespace, logdir: Path) -> tuple[sim.Trace, list[Result]]:
    trace = live_trace(key, args.seed)
    print(f"# {trace.name}: {len(trace.jobs)} jobs, last arrival {trace.jobs[-1][0]:.0f}s, "
          f"systems {', '.join(args.systems)}", file=sys.stderr, flush=True)
    batches = [list(args.systems)] if not args.sequential else [[s] for s in args.systems]
    results: dict[str, Result] = {}
    with bgq.Client(redis.url_for_host) as client:
        for batch in batches:
            runs = [setup(cluster, redis, image, s, key, args, logdir) for s in batch]
            try:
                t0 = time.time() + 2
                for run in runs:
                    run.started = t0
                drive(trace, runs, client, t0)
                wait_settled(runs, client, t0 + trace.horizon)
                for run in runs:
                    results[run.system] = collect(run, client)
                    print(f"  {run.system}: done after {run.ended - t0:.0f}s",
                          file=sys.stderr, flush=True)
            finally:
                for run in runs:
                    teardown(cluster, run)
    return trace, [results[s] for s in args.systems]


@contextlib.contextmanager
def keda_running(keep: bool) -> Iterator[None]:
    subprocess.run([str(HACK / "keda"), "up"], check=True)
    try:
        yield
    finally:
        if not keep:
            subprocess.run([str(HACK / "keda"), "down"], check=False)


def versions(cluster: Cluster) -> str:
    env = cluster.env
    return (f"Kubernetes {env.get('K8S_VERSION')} (hack/cluster, 1 node, 2 cores shared), "
            f"KEDA {env.get('KEDA_VERSION')} (operator + metrics apiserver in-cluster, "
            f"hack/cluster/keda), HPA of kube-controller-manager (sync 15 s), "
            f"bgq {bgq.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", action="append", choices=sorted(SHORTEN),
                        help="trace(s) to run (default: all four)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=10, help="job slots per pod")
    parser.add_argument("--max-replicas", type=int, default=10)
    parser.add_argument("--sequential", action="store_true",
                        help="run the systems one after another (default: side by side)")
    parser.add_argument("--keep-keda", action="store_true", help="leave KEDA installed")
    parser.add_argument("--keda-metric", choices=["streamLength", "lagCount"],
                        default="streamLength",
                        help="the redis-streams trigger's metric (default streamLength; see above)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "keda_live.md")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (the test cluster): sudo make bench-keda")
    cluster = load_cluster()
    image = build_image("worker")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    logdir = cluster.run_dir / "logs" / "keda-live"
    logdir.mkdir(parents=True, exist_ok=True)
    redis = HostRedis(host_ip=cluster.host_ip, port=REDIS_PORT, workdir=logdir / "redis",
                      netns_path=cluster.netns_path)
    redis.start()
    started = time.time()
    rows = []
    try:
        ctx = keda_running(args.keep_keda) if set(args.systems) - {"bgq"} \
            else contextlib.nullcontext()
        with ctx:
            for key in args.trace or list(SHORTEN):
                rows.append(run_trace(cluster, redis, image, key, args, logdir))
                write_report(rows, args, cluster, started)  # partial results survive a crash
    finally:
        redis.stop()
    write_report(rows, args, cluster, started, final=True)
    return 0


def write_report(rows: list[tuple[sim.Trace, list[Result]]], args: argparse.Namespace,
                 cluster: Cluster, started: float, final: bool = False) -> None:
    """The markdown report (and its JSON) in ``args.out``; printed when ``final``."""
    report = [
        f"keda_live seed={args.seed} concurrency={args.concurrency} max={args.max_replicas} "
        f"{'sequential' if args.sequential else 'side by side'}, KEDA trigger "
        f"redis-streams {args.keda_metric}; {versions(cluster)}",
        "",
        *(f"- {t.name}: {t.description} ({len(t.jobs)} jobs)" for t, _ in rows),
        "",
        live_table(rows),
        "",
        "The simulator (bench/autoscale_sim.py) on the same shortened traces, pod start = the "
        "median measured pod created -> Ready:",
        "",
        sim_table(rows, args),
        "",
        f"({time.time() - started:.0f}s wall)",
    ]
    text = "\n".join(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()},
         "results": [[t.name, [r.__dict__ for r in rs]] for t, rs in rows]}, indent=1))
    if final:
        print(text)
        print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
