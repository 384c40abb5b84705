"""One operator, many queues, on the real test cluster (issue 12's 1,000-queue benchmark).

Usage (root; ``hack/cluster/up`` is run if the cluster is down): ``make bench-operator`` or
``.venv/bin/python bench/operator_scale.py [--queues 1000] [--namespaces 10] [--endpoints 2]
[--samples 60] [--burst-queues 50] [--idle-seconds 60] [--out FILE]``.

What runs: two redis-servers on the host (the endpoints), ``--queues`` BackgroundQueues with
minReplicas 0 spread over ``--namespaces`` new namespaces and the endpoints, and the bgq operator
as a host process watching those namespaces (``python -m bgq_operator --namespace ...``). The
worker pods can never be scheduled (a nodeSelector no node has): the benchmark measures the
operator and the API server, not pod starts.

Phases and figures:

1. **start**: seconds from the operator's start until every queue is reconciled (status with
   observedGeneration and a Deployment), the operator's own API requests meanwhile.
2. **idle** (``--idle-seconds``, starting ``--settle-seconds`` after Kubernetes' own controllers
   are done with the new Deployments): operator CPU (% of one core, from /proc), RSS, its API
   requests per minute by method (``bgq_operator_api_requests_total``; status writes are the
   PATCHes), and the writes the API server itself counted (``apiserver_request_total``, anyone's,
   kopf's own annotation patches included) to BackgroundQueues, Deployments and Events. The
   goal: 0 writes per idle queue, < 5 % of a core.
3. **bursts**: a producer thread enqueues into ``--burst-queues`` queues continuously (one job
   every 20 ms, round robin: a wake-up every 20 ms), and ``--samples`` times a job is enqueued into
   a queue that is idle at 0 replicas; the sample is the time from that enqueue to the moment a
   Deployment watch sees its ``spec.replicas`` >= 1 (enqueue -> decision applied). p50/p95/max,
   the operator's CPU and API requests per second during the phase. The goal: p95 <= 250 ms.
   (Where the time goes inside the operator, stage by stage, without a cluster:
   ``bench/operator_local.py``.)
4. **restart**: SIGTERM, a new operator process, seconds until it has reconciled every queue
   again (its ``bgq_operator_reconciles_total``).

Everything it created is removed at the end (namespaces, operator, redis-servers). A markdown
report is printed and written to ``--out`` (default bench/results/operator_scale.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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
    cluster_is_up,
    free_port,
    load_cluster,
    run_script,
    stop_process,
)

import bgq  # noqa: E402
from bgq_operator.manifests import LABEL_MANAGED_BY, MANAGED_BY  # noqa: E402

CRD = REPO / "crds" / "backgroundqueues.bgq.dev.yaml"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def queue_manifest(name: str, namespace: str, redis_url: str) -> dict[str, Any]:
    """A BackgroundQueue whose worker pods can never be scheduled (the node lacks the label)."""
    return {
        "apiVersion": "bgq.dev/v1alpha1",
        "kind": "BackgroundQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "redis": {"url": redis_url},
            "worker": {
                "image": "bgq-bench/unschedulable:0", "imagePullPolicy": "Never",
                "tasksModule": "bench_tasks", "concurrency": 10,
                "nodeSelector": {"bgq.dev/bench-operator-scale": "no-such-node"},
            },
            "scaling": {"minReplicas": 0, "maxReplicas": 3},
        },
    }  # fmt: skip


@dataclass
class Operator:
    """``python -m bgq_operator`` on the host, watching the benchmark's namespaces."""

    cluster: Cluster
    namespaces: list[str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: NetnsProcess | None = None

    def start(self) -> None:
        args = [a for ns in self.namespaces for a in ("--namespace", ns)]
        self._log = self.log_path.open("ab")
        # inside the cluster's network namespace, like an in-cluster operator: the API server
        # and the Redis servers directly, no portal in its path; its HTTP port is forwarded
        self.proc = self.cluster.netns_process(
            [sys.executable, "-m", "bgq_operator", *args, "--http-host", "127.0.0.1",
             "--http-port", str(self.port), "--log-level", "WARNING"],
            ports=[self.port], stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, 30)
        self._log.close()

    def metrics(self) -> dict[str, float]:
        """The operator's /metrics as {series: value} (labels kept in the key)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out

    def api_requests(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for key, value in self.metrics().items():
            m = re.match(r'bgq_operator_api_requests_total\{method="(\w+)"\}', key)
            if m:
                found[m.group(1)] = value
        return found

    def reconciles(self) -> float:
        return sum(v for k, v in self.metrics().items()
                   if k.startswith("bgq_operator_reconciles_total{"))  # fmt: skip

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


class DeploymentWatch:
    """``kubectl get deployments -w`` per namespace: when each first had spec.replicas >= 1."""

    def __init__(self, cluster: Cluster, namespaces: list[str]) -> None:
        self.first_up: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._procs = []
        template = '{.metadata.name} {.spec.replicas}{"\\n"}'
        for ns in namespaces:
            proc = subprocess.Popen(
                [str(cluster.kubectl_bin), "--kubeconfig", str(cluster.kubeconfig), "get",
                 "deployments", "-n", ns, "-w", "-o", f"jsonpath={template}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            self._procs.append(proc)
            threading.Thread(target=self._read, args=(ns, proc), daemon=True).start()

    def _read(self, ns: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) >= 1:
                with self._lock:
                    self.first_up.setdefault((ns, parts[0]), time.monotonic())

    def seen(self, ns: str, deployment: str) -> float | None:
        with self._lock:
            return self.first_up.get((ns, deployment))

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def reconciled_count(cluster: Cluster, namespaces: set[str]) -> int:
    items = cluster.get_json("backgroundqueues", "-A")["items"]
    return sum(
        1 for q in items
        if q["metadata"]["namespace"] in namespaces
        and (q.get("status") or {}).get("observedGeneration")
        and "replicas" in (q.get("status") or {})
    )  # fmt: skip


def controllers_settled(cluster: Cluster, namespaces: set[str], count: int) -> bool:
    """Whether Kubernetes' own controllers are done with the queues' Deployments: every one has
    observed its generation and reports Available. Until then (at 1,000 new Deployments the
    controller-manager, at its default 20 requests/s, writes their statuses for minutes) the
    operator receives their watch events, and an "idle" figure would measure that catch-up."""
    items = cluster.get_json("deployments", "-A", "-l", f"{LABEL_MANAGED_BY}={MANAGED_BY}")["items"]
    done = 0
    for d in items:
        status = d.get("status") or {}
        if d["metadata"]["namespace"] not in namespaces:
            continue
        if status.get("observedGeneration") == d["metadata"].get("generation") and any(
                c.get("type") == "Available" for c in status.get("conditions") or []):
            done += 1
    return done >= count


WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
WATCHED = ("backgroundqueues", "deployments", "events")


def server_writes(cluster: Cluster) -> dict[str, float]:
    """The API server's own count of writes (anyone's: the operator's client, kopf's own
    patches, the controllers) to BackgroundQueues, Deployments and Events, by resource."""
    text = cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    found: dict[str, float] = dict.fromkeys(WATCHED, 0.0)
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if labels.get("verb") in WRITE_VERBS and labels.get("resource") in found:
            found[labels["resource"]] += float(line.rsplit(" ", 1)[1])
    return found


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@contextlib.contextmanager
def redis_servers(cluster: Cluster, count: int, workdir: Path) -> Iterator[list[HostRedis]]:
    servers = [HostRedis(cluster.host_ip, free_port(), workdir / f"redis{i}", cluster.netns_path)
               for i in range(count)]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


def run(args: argparse.Namespace) -> str:
    if not cluster_is_up():
        run_script("up")
    cluster = load_cluster()
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/backgroundqueues.bgq.dev")
    run_id = secrets.token_hex(3)
    namespaces = [f"bgq-scale-{run_id}-{i}" for i in range(args.namespaces)]
    lines: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="bgq-operator-scale-"))
    with redis_servers(cluster, args.endpoints, work) as servers:
        for ns in namespaces:
            cluster.kubectl("create", "namespace", ns)
        queues: list[tuple[str, str, int]] = []  # namespace, name, endpoint index
        for i in range(args.queues):
            queues.append((namespaces[i % args.namespaces], f"q{i:04d}", i % args.endpoints))
        t_apply = time.monotonic()
        for ns in namespaces:
            items = [queue_manifest(n, ns, servers[e].url_for_host) for q_ns, n, e in queues
                     if q_ns == ns]  # fmt: skip
            cluster.kubectl("apply", "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": items}), timeout=600)
        apply_s = time.monotonic() - t_apply
        op = Operator(cluster, namespaces, work / "operator.log")
        watch = DeploymentWatch(cluster, namespaces)
        clients = [bgq.Client(s.url_for_host) for s in servers]
        try:
            # 1. start: every queue reconciled
            t0 = time.monotonic()
            op.start()
            wait(lambda: reconciled_count(cluster, set(namespaces)) >= args.queues,
                 args.start_timeout, f"{args.queues} queues reconciled", interval=1.0)
            start_s = time.monotonic() - t0
            start_requests = op.api_requests()

            # 2. idle: once the controller-manager is done with the new Deployments, and settled
            wait(lambda: controllers_settled(cluster, set(namespaces), args.queues),
                 args.start_timeout, "the controller-manager to be done with the Deployments",
                 interval=2.0)
            settled_s = time.monotonic() - t0
            time.sleep(args.settle_seconds)
            writes0 = server_writes(cluster)
            cpu0, req0, w0 = op.cpu_seconds(), op.api_requests(), time.monotonic()
            time.sleep(args.idle_seconds)
            cpu1, req1, w1 = op.cpu_seconds(), op.api_requests(), time.monotonic()
            writes1 = server_writes(cluster)
            server_per_min = {r: (writes1[r] - writes0[r]) * 60 / (w1 - w0) for r in WATCHED}
            idle_cpu = 100 * (cpu1 - cpu0) / (w1 - w0)
            idle_rss = op.rss_mb()
            idle_per_min = {m: (req1.get(m, 0) - req0.get(m, 0)) * 60 / (w1 - w0)
                            for m in sorted(set(req1) | set(req0))}  # fmt: skip

            # 3. bursts on --burst-queues queues + enqueue -> decision samples on idle ones
            rng = random.Random(7)
            shuffled = queues[:]
            rng.shuffle(shuffled)
            burst, fresh = shuffled[: args.burst_queues], shuffled[args.burst_queues :]
            stop = threading.Event()
            produced = [0]

            def producer() -> None:
                i = 0
                while not stop.is_set():
                    ns, name, e = burst[i % len(burst)]
                    clients[e].enqueue(f"{ns}/{name}", "noop")
                    produced[0] += 1
                    i += 1
                    stop.wait(0.02)

            thread = threading.Thread(target=producer, daemon=True)
            cpu2, w2, req2 = op.cpu_seconds(), time.monotonic(), op.api_requests()
            thread.start()
            samples: list[float] = []
            missed = 0
            for ns, name, e in fresh[: args.samples]:
                t = time.monotonic()
                clients[e].enqueue(f"{ns}/{name}", "noop")
                try:
                    up = wait(lambda ns=ns, name=name: watch.seen(ns, f"bgq-{name}"), 30,
                              f"bgq-{name} scaled up", interval=0.005)
                except TimeoutError:
                    missed += 1
                    continue
                samples.append((up - t) * 1000)
                time.sleep(0.3)
            stop.set()
            thread.join(5)
            cpu3, w3, req3 = op.cpu_seconds(), time.monotonic(), op.api_requests()
            burst_cpu = 100 * (cpu3 - cpu2) / (w3 - w2)
            burst_per_s = {m: (req3.get(m, 0) - req2.get(m, 0)) / (w3 - w2)
                           for m in sorted(set(req3) | set(req2))}  # fmt: skip
            burst_rss = op.rss_mb()

            # 4. restart
            op.stop()
            op = Operator(cluster, namespaces, work / "operator.log")
            t4 = time.monotonic()
            op.start()
            wait(lambda: op.reconciles() >= args.queues, args.start_timeout,
                 "every queue reconciled after the restart", interval=0.5)
            restart_s = time.monotonic() - t4
        finally:
            stop_all = [op.stop, watch.stop, *[c.close for c in clients]]
            for fn in stop_all:
                with contextlib.suppress(Exception):
                    fn()
            for ns in namespaces:
                cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)

    writes = {m: v for m, v in idle_per_min.items() if m != "GET"}
    lines += [
        f"# One operator, {args.queues} queues ({args.namespaces} namespaces, "
        f"{args.endpoints} Redis endpoints)",
        "",
        f"Command: `.venv/bin/python bench/operator_scale.py --queues {args.queues} "
        f"--namespaces {args.namespaces} --endpoints {args.endpoints} --samples {args.samples} "
        f"--burst-queues {args.burst_queues} --idle-seconds {args.idle_seconds}`; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average before: "
        f"{os.getloadavg()[0]:.1f}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| apply {args.queues} BackgroundQueues (kubectl) | {apply_s:.1f} s |",
        f"| operator start → all reconciled | {start_s:.1f} s |",
        f"| operator start → Kubernetes' controllers done with the Deployments (idle starts "
        f"{args.settle_seconds:.0f} s later) | {settled_s:.1f} s |",
        f"| API requests during the start | "
        f"{', '.join(f'{m} {v:.0f}' for m, v in sorted(start_requests.items()))} |",
        f"| idle: CPU (one core) | {idle_cpu:.1f} % |",
        f"| idle: RSS | {idle_rss:.0f} MB |",
        f"| idle: API requests per minute | "
        f"{', '.join(f'{m} {v:.1f}' for m, v in idle_per_min.items()) or 'none'} |",
        f"| idle: API writes per minute per queue | "
        f"{sum(writes.values()) / args.queues:.3f} |",
        f"| idle: writes per minute the API server saw (anyone's) | "
        f"{', '.join(f'{r} {v:.1f}' for r, v in server_per_min.items())} |",
        f"| bursts: jobs enqueued into {args.burst_queues} queues | {produced[0]} |",
        f"| bursts: CPU (one core) | {burst_cpu:.1f} % |",
        f"| bursts: RSS | {burst_rss:.0f} MB |",
        f"| bursts: API requests per second (the writes a scale PATCH queues behind) | "
        f"{', '.join(f'{m} {v:.1f}' for m, v in burst_per_s.items()) or 'none'} |",
        f"| enqueue → decision applied, {len(samples)} samples (missed {missed}) | "
        + (f"p50 {statistics.median(samples):.0f} ms, p95 {pct(samples, 0.95):.0f} ms, "
           f"max {max(samples):.0f} ms |" if samples else "none |"),
        f"| restart → all reconciled again | {restart_s:.1f} s |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queues", type=int, default=1000)
    p.add_argument("--namespaces", type=int, default=10)
    p.add_argument("--endpoints", type=int, default=2)
    p.add_argument("--samples", type=int, default=60)
    p.add_argument("--burst-queues", type=int, default=50)
    p.add_argument("--idle-seconds", type=float, default=60)
    p.add_argument("--settle-seconds", type=float, default=15)
    p.add_argument("--start-timeout", type=float, default=900)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "operator_scale.md")
    args = p.parse_args(argv)
    if args.samples + args.burst_queues > args.queues:
        p.error("--samples + --burst-queues must not exceed --queues (each sample needs an idle "
                "queue of its own)")
    report = run(args)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
