"""Soak the SIGTERM drain on the real cluster: many worker pods deleted at random moments.

Usage (root, a running test cluster: ``hack/cluster/up``)::

    .venv/bin/python bench/drain_soak.py [--cycles 120] [--lanes 3] [--drain 8] [--seed 1]
    make bench-drain                       # the same with the defaults

Each cycle creates one worker pod from the operator's own pod template
(``bgq_operator.manifests.pod_template``: ``tini -e 143 -- bgq worker``, probes, security, grace
= drain + 5 s) and deletes it the way a scale-down does (a pod DELETE with its grace period)
at a random moment of one scenario:

* ``early``: 0 to 1 s after containerd started the container (interpreter start, imports,
  connecting: the moment a PID 1 without a handler used to drop the SIGTERM);
* ``busy``: 0 to 2 s after the worker's heartbeat said ``busy`` (it runs and prefetches jobs);
* ``neighbour``: like ``busy``, and a neighbour pod on the same bridge is deleted mid-drain;
* ``redis-pause``: like ``busy``, and the Redis server is frozen (SIGSTOP) for 0.5 to 3 s
  mid-drain, then resumed (SIGCONT).

``--lanes`` cycles run at once. A feeder keeps a backlog of thread, async and process
(``cpu_bound``) jobs of 0.2 to 2 s (``tests/e2e/app/e2e_tasks.py``, ``ledger_*``: each job writes
a start and an end record). The second half of the cycles runs with CPU load (pods spinning on
the node, ``--load-pods`` x 500m). The bench starts its own redis-server on the host, bound to
127.0.0.1 and the pod bridge address, on a port in 7100-7199, and stops it at the end. At the end
one more worker pod finishes whatever was handed back, then the bench prints:

* SIGKILLed pods (exit 137, i.e. still running at the grace period): must be 0;
* other non-zero exits, and pods whose terminated state was never reported;
* jobs lost (not succeeded at the end), duplicates (jobs that started more than once, i.e. were
  interrupted and run again), retries burned (attempts beyond the first + lease expiries);
* delete -> exit latency, p50/p95/max, per scenario and load phase (the DELETE request to
  containerd's exit event; the kubelet sends SIGTERM ~0.1 s after the DELETE).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.e2e.kube import (  # noqa: E402
    Cluster,
    HostRedis,
    build_image,
    cluster_is_up,
    load_cluster,
    namespace_name,
)
from tests.e2e.podwatch import (  # noqa: E402
    SIGKILL_EXIT,
    Api,
    Container,
    ContainerEvents,
    PodWatch,
    exit_code,
)

import bgq  # noqa: E402
from bgq_operator.manifests import pod_template  # noqa: E402
from bgq_operator.spec import BackgroundQueueSpec, queue_name  # noqa: E402

SCENARIOS = ("early", "busy", "neighbour", "redis-pause")
KINDS = ("ledger_thread", "ledger_async", "ledger_process")
PORTS = range(7100, 7200)
BQ = "soak"


@dataclass
class Cycle:
    """One pod's life and death."""

    pod: str
    scenario: str
    loaded: bool
    deleted_at: float = 0.0
    exited_at: float | None = None
    exit_code: int | None = None
    killed: bool = False
    no_state: bool = False
    error: str = ""


class Soak:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, image: str,
                 redis_server: HostRedis, namespace: str) -> None:
        self.args = args
        self.cluster = cluster
        self.redis_server = redis_server
        self.namespace = namespace
        self.rng = random.Random(args.seed)
        self.rng_lock = threading.Lock()
        self.queue = queue_name(namespace, BQ)
        self.ledger = f"soak-ledger:{namespace}"
        self.spec = BackgroundQueueSpec.model_validate({
            "redis": {"url": redis_server.url_for_pods},
            "worker": {"image": image, "imagePullPolicy": "Never", "tasksModule": "e2e_tasks",
                       "concurrency": args.concurrency,
                       "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}}},
            "drainSeconds": args.drain,
            "jobs": {"leaseSeconds": args.lease},
        })
        self.grace = args.drain + 5
        self.api = Api(cluster.kubeconfig)
        self.log_dir = Path(args.log_dir) / namespace
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.events = ContainerEvents(cluster.run_dir, {namespace}, on_exit=self.keep_log)
        self.watch = PodWatch(self.api, namespace)
        self.pause_lock = threading.Lock()
        self.job_ids: list[str] = []
        self.stop_feeding = threading.Event()
        self.cycles: list[Cycle] = []
        self.cycles_lock = threading.Lock()
        self.next_cycle = 0
        self.infos: list[bgq.JobInfo] = []

    # ------------------------------------------------------------------ helpers
    def uniform(self, a: float, b: float) -> float:
        with self.rng_lock:
            return self.rng.uniform(a, b)

    def keep_log(self, c: Container) -> None:
        """Copy the worker's log at its exit, before the kubelet removes it with the pod."""
        for f in c.log_files(self.cluster.run_dir):
            shutil.copyfile(f, self.log_dir / f"{c.pod}.log")

    def worker_pod(self, name: str) -> dict[str, Any]:
        template = pod_template(BQ, self.namespace, self.spec)
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {**template["metadata"], "name": name}, "spec": template["spec"]}

    def busybox_pod(self, name: str, script: str, cpu: str | None = None) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": "main", "image": self.cluster.busybox_image, "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", script]}
        if cpu:
            container["resources"] = {"limits": {"cpu": cpu}, "requests": {"cpu": "10m"}}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [container]}}

    def wait_gone(self, pod: str, timeout: float) -> None:
        self.watch.wait(lambda pods: pod in pods and pods[pod].deleted, timeout,
                        f"pod {pod} to be gone")

    # ------------------------------------------------------------------ feeder
    def feed(self) -> None:
        """Keep the backlog at ~2x all slots with a random mix of job kinds and lengths."""
        target = 2 * self.args.lanes * self.args.concurrency
        n = 0
        with bgq.Client(self.redis_server.url_for_host) as client:
            while not self.stop_feeding.is_set():
                try:
                    backlog = client.stats(self.queue).backlog
                    for _ in range(max(0, target - backlog)):
                        kind = KINDS[n % len(KINDS)]
                        job = client.enqueue(self.queue, kind, self.ledger, f"b{n}",
                                             round(self.uniform(0.2, 2.0), 2))
                        self.job_ids.append(job.id)
                        n += 1
                except bgq.BgqError:
                    pass  # Redis paused by a redis-pause cycle: try again
                self.stop_feeding.wait(0.2)

    # ------------------------------------------------------------------ one cycle
    def claim(self) -> tuple[int, bool] | None:
        with self.cycles_lock:
            if self.next_cycle >= self.args.cycles:
                return None
            i = self.next_cycle
            self.next_cycle += 1
            return i, self.args.load_pods > 0 and i >= self.args.cycles // 2

    def lane(self) -> None:
        while (claimed := self.claim()) is not None:
            i, loaded = claimed
            with self.rng_lock:
                scenario = self.rng.choice(SCENARIOS)
            cycle = Cycle(f"w-{i}", scenario, loaded)
            try:
                self.run_cycle(cycle)
            except Exception as exc:
                cycle.error = f"{type(exc).__name__}: {exc}"[:300]
            with self.cycles_lock:
                self.cycles.append(cycle)
                done = len(self.cycles)
            print(f"[{done:>3}/{self.args.cycles}] {cycle.pod:<6} {scenario:<11} "
                  f"{'load' if loaded else 'quiet':<5} exit={cycle.exit_code} "
                  f"delete->exit={self.latency(cycle)} {cycle.error}", flush=True)

    @staticmethod
    def latency(cycle: Cycle) -> str:
        if cycle.exited_at is None or not cycle.deleted_at:
            return "-"
        return f"{cycle.exited_at - cycle.deleted_at:.2f}s"

    def run_cycle(self, cycle: Cycle) -> None:
        neighbour = f"n-{cycle.pod}"
        if cycle.scenario == "neighbour":
            self.api.create_pod(self.namespace, self.busybox_pod(
                neighbour, "trap 'exit 0' TERM; while true; do sleep 0.2; done"))
        self.api.create_pod(self.namespace, self.worker_pod(cycle.pod))
        deadline = time.monotonic() + 180
        while (c := self.events.by_pod(cycle.pod)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cycle.pod}: container never started")
            time.sleep(0.01)
        if cycle.scenario == "early":
            time.sleep(max(0.0, c.started + self.uniform(0.0, 1.0) - time.time()))
        else:
            self.wait_busy(cycle.pod, 120)
            time.sleep(self.uniform(0.0, 2.0))
        cycle.deleted_at = self.api.delete_pod(self.namespace, cycle.pod)
        if cycle.scenario == "neighbour":
            time.sleep(self.uniform(0.1, 1.0))
            self.api.delete_pod(self.namespace, neighbour)
        elif cycle.scenario == "redis-pause":
            self.pause_redis()
        self.wait_gone(cycle.pod, self.grace + 60)
        rec = self.watch.snapshot()[cycle.pod]
        c = self.events.by_pod(cycle.pod)
        if c is not None and c.exited is not None:
            cycle.exited_at = c.exited
        cycle.no_state = rec.terminated is None
        # containerd's exit status (the process's own) over the kubelet's record, which can say
        # 137 "ContainerStatusUnknown" for a clean exit it did not read in time
        cycle.exit_code = exit_code(rec, c)
        cycle.killed = cycle.exit_code == SIGKILL_EXIT

    def wait_busy(self, pod: str, timeout: float) -> None:
        """Until the pod's worker heartbeat says ``busy`` (it runs jobs; more are prefetched)."""
        deadline = time.monotonic() + timeout
        with bgq.Client(self.redis_server.url_for_host) as client:
            while time.monotonic() < deadline:
                try:
                    workers = client.stats(self.queue).workers
                except bgq.BgqError:
                    workers = []  # Redis paused by another cycle
                if any(w.pod == pod and w.state == "busy" for w in workers):
                    return
                time.sleep(0.05)
        raise TimeoutError(f"{pod} never became busy")

    def pause_redis(self) -> None:
        """SIGSTOP the Redis server for 0.5-3 s, 0-0.5 s after the deletion (one at a time)."""
        assert self.redis_server.proc is not None
        pid = self.redis_server.proc.pid
        with self.pause_lock:
            time.sleep(self.uniform(0.0, 0.5))
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(self.uniform(0.5, 3.0))
            finally:
                os.kill(pid, signal.SIGCONT)

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        feeder = threading.Thread(target=self.feed, name="feeder", daemon=True)
        feeder.start()
        load_started = False
        lanes = [threading.Thread(target=self.lane, name=f"lane{i}", daemon=True)
                 for i in range(self.args.lanes)]
        started = time.monotonic()
        for t in lanes:
            t.start()
        while any(t.is_alive() for t in lanes):
            with self.cycles_lock:
                half = self.next_cycle >= self.args.cycles // 2
            if half and not load_started and self.args.load_pods > 0:
                load_started = True
                for k in range(self.args.load_pods):
                    self.api.create_pod(self.namespace, self.busybox_pod(
                        f"cpu-load-{k}", "while :; do :; done", cpu="500m"))
                print(f"--- CPU load on: {self.args.load_pods} pod(s) x 500m", flush=True)
            time.sleep(0.2)
        soak_seconds = time.monotonic() - started
        self.stop_feeding.set()
        feeder.join(10)
        for k in range(self.args.load_pods if load_started else 0):
            self.api.delete_pod(self.namespace, f"cpu-load-{k}")
        print("--- finishing the handed-back jobs with one more worker pod", flush=True)
        self.api.create_pod(self.namespace, self.worker_pod("w-sweeper"))
        lost = self.settle_all()
        self.api.delete_pod(self.namespace, "w-sweeper")
        self.wait_gone("w-sweeper", self.grace + 30)
        return self.report(soak_seconds, lost)

    def settle_all(self) -> list[str]:
        """Wait for every job to finish (leases of a killed pod's jobs expire first)."""
        deadline = time.monotonic() + self.args.lease * 3 + 120
        pending = list(self.job_ids)
        with bgq.Client(self.redis_server.url_for_host) as client:
            while pending and time.monotonic() < deadline:
                pending = [j for j in pending
                           if client.get(self.queue, j).state not in
                           (bgq.JobState.SUCCEEDED, bgq.JobState.DEAD)]
                if pending:
                    time.sleep(0.5)
            self.infos = [client.get(self.queue, j) for j in self.job_ids]
        return pending

    def report(self, soak_seconds: float, pending: list[str]) -> int:
        r: Any = self.redis_server.client()
        records = [line.decode().split() for line in r.lrange(self.ledger, 0, -1)]
        r.close()
        starts = Counter(rec[1] for rec in records if rec[0] == "start")
        ends = Counter(rec[1] for rec in records if rec[0] == "end")
        lost = [i for i in self.infos if i.state != bgq.JobState.SUCCEEDED]
        duplicates = sum(1 for n in starts.values() if n > 1)
        unfinished_runs = sum(starts.values()) - sum(ends.values())
        retries = sum(i.attempt - 1 for i in self.infos)
        expiries = sum(i.lease_expiries for i in self.infos)
        by_kind = Counter(i.task for i in self.infos)
        killed = [c for c in self.cycles if c.killed]
        nonzero = [c for c in self.cycles if not c.killed and c.exit_code not in (0, None)]
        no_state = [c for c in self.cycles if c.no_state]
        errors = [c for c in self.cycles if c.error]

        print()
        print(f"drain soak: {len(self.cycles)} scale-downs in {soak_seconds:.0f} s, "
              f"{self.args.lanes} at a time, drain {self.args.drain} s, grace {self.grace} s, "
              f"concurrency {self.args.concurrency}, seed {self.args.seed}")
        print(f"  scenarios: {dict(Counter(c.scenario for c in self.cycles))}; "
              f"with CPU load: {sum(c.loaded for c in self.cycles)}")
        print(f"  jobs: {len(self.infos)} ({dict(by_kind)}); worker logs in {self.log_dir}")
        print(f"  SIGKILLed pods:          {len(killed)}   "
              f"{[(c.pod, c.scenario) for c in killed]}")
        print(f"  other non-zero exits:    {len(nonzero)}   "
              f"{[(c.pod, c.exit_code) for c in nonzero]}")
        print(f"  no terminated state:     {len(no_state)}")
        print(f"  cycle errors:            {len(errors)}   {[c.error for c in errors][:5]}")
        print(f"  jobs lost:               {len(lost)}   "
              f"{[(i.id, i.state.value) for i in lost][:10]}")
        print(f"  duplicates:              {duplicates}   (jobs started more than once)")
        print(f"  interrupted runs:        {unfinished_runs}   (starts without an end)")
        print(f"  retries burned:          {retries + expiries}   "
              f"(attempts beyond the first {retries}, lease expiries {expiries})")
        groups: dict[str, list[float]] = defaultdict(list)
        for c in self.cycles:
            if c.exited_at is not None and c.deleted_at:
                took = c.exited_at - c.deleted_at
                groups["all"].append(took)
                groups[c.scenario].append(took)
                groups["load" if c.loaded else "quiet"].append(took)
        print("  delete -> exit (s):       n     p50    p95    max")
        for name in ("all", *SCENARIOS, "quiet", "load"):
            xs = sorted(groups.get(name, []))
            if xs:
                print(f"    {name:<20} {len(xs):>4} {statistics.median(xs):>7.2f} "
                      f"{percentile(xs, 95):>6.2f} {xs[-1]:>6.2f}")
        bad = killed or nonzero or lost or duplicates or unfinished_runs or pending or errors
        return 1 if bad else 0

    def close(self) -> None:
        self.watch.close()
        self.events.close()
        self.api.close()


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted ``xs``."""
    k = max(0, min(len(xs) - 1, round(p / 100 * len(xs) + 0.5) - 1))
    return xs[k]


def free_bench_port() -> int:
    """A port of PORTS free on the host's loopback (the portal's side of HostRedis)."""
    import socket

    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port in 7100-7199 for the bench's redis-server")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=120, help="scale-downs (default 120)")
    ap.add_argument("--lanes", type=int, default=3, help="pods cycled at once (default 3)")
    ap.add_argument("--drain", type=int, default=8, help="drainSeconds (default 8)")
    ap.add_argument("--lease", type=int, default=10, help="jobs.leaseSeconds (default 10)")
    ap.add_argument("--concurrency", type=int, default=2, help="worker slots (default 2)")
    ap.add_argument("--load-pods", type=int, default=2, help="CPU spinners, 2nd half (2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--log-dir", default="/tmp/bgq-drain-soak-logs",
                    help="each worker's log is kept here, per run namespace")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("drain_soak needs root (containerd events, the test cluster)")
    if not cluster_is_up():
        raise SystemExit("the test cluster is not up: run hack/cluster/up first")
    cluster = load_cluster()
    image = build_image("worker")
    namespace = namespace_name("bench-drain")
    cluster.kubectl("create", "namespace", namespace)
    cluster.wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", namespace,
                                             check=False).returncode == 0, 30, "the namespace")
    with tempfile.TemporaryDirectory(prefix="bgq-drain-soak-") as tmp:
        server = HostRedis(cluster.host_ip, free_bench_port(), Path(tmp), cluster.netns_path)
        server.start()
        soak = Soak(args, cluster, image, server, namespace)
        try:
            print(f"drain soak in {namespace}, image {image}, redis {server.url_for_pods}",
                  flush=True)
            return soak.run()
        finally:
            soak.close()
            server.stop()
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


if __name__ == "__main__":
    sys.exit(main())
