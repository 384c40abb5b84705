"""The autoscaler on the real cluster: one-step scale-up, idle-only scale-down, gated zero.

The operator runs on the host (``python -m bgq_operator --namespace <test ns>``); worker pods run
the project image and reach the host's redis-server. A ``kubectl get --watch`` on the worker
Deployment records every ``spec.replicas`` the API server stored, with arrival times, so the
tests can assert the whole replica history (no intermediate values) and measure latencies.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import free_port
from tests.e2e.kube import Cluster, HostRedis, stop_process

import bgq

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "backgroundqueues.bgq.dev.yaml"
SELECTOR = "app.kubernetes.io/name=bgq-worker,app.kubernetes.io/instance={name}"
CONCURRENCY = 2


def queue_manifest(name: str, image: str, redis_url: str, **scaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bgq.dev/v1alpha1",
        "kind": "BackgroundQueue",
        "metadata": {"name": name},
        "spec": {
            "redis": {"url": redis_url},
            "worker": {
                "image": image,
                "imagePullPolicy": "Never",
                "tasksModule": "e2e_tasks",
                "concurrency": CONCURRENCY,
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
            },
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": 4,
                "scaleDownDelaySeconds": 3,
                "idleSecondsBeforeZero": 5,
                "pollIntervalSeconds": 1,
                **scaling,
            },
            "drainSeconds": 5,
        },
    }


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                    "crd/backgroundqueues.bgq.dev")


@pytest.fixture
def operator(cluster: Cluster, crd: None, namespace: str, tmp_path: Path) -> Iterator[str]:
    """The operator as a host process watching only the test namespace; yields its base URL."""
    port = free_port()
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        # inside the cluster's network namespace (it reads the queues' Redis at the pods'
        # address); its HTTP port is forwarded to the host's loopback
        proc = cluster.netns_process(
            [sys.executable, "-m", "bgq_operator", "--namespace", namespace,
             "--http-host", "127.0.0.1", "--http-port", str(port)],
            ports=[port], env={"BGQ_LOG_LEVEL": "INFO"},
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(proc, 15)
    sys.stderr.write(log_path.read_text(errors="replace")[-3000:])


@dataclass
class ReplicaWatch:
    """Every stored ``spec.replicas`` of a Deployment, timestamped (time.monotonic)."""

    cluster: Cluster
    namespace: str
    deployment: str
    history: list[tuple[float, int]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.cluster.kubectl_bin), "--kubeconfig", str(self.cluster.kubeconfig),
             "get", "deployment", self.deployment, "-n", self.namespace, "--watch",
             "-o", "jsonpath={.spec.replicas}{\"\\n\"}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait(lambda h: h, 10, "the first watch event")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                with self.lock:
                    value = int(line)
                    if not self.history or self.history[-1][1] != value:
                        self.history.append((time.monotonic(), value))

    def values(self) -> list[int]:
        with self.lock:
            return [v for _, v in self.history]

    def snapshot(self) -> list[tuple[float, int]]:
        with self.lock:
            return list(self.history)

    def wait(self, pred: Any, timeout: float, what: str) -> list[tuple[float, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.snapshot()
            if pred(snap):
                return snap
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                             f"replica history {self.values()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def make_queue(
    cluster: Cluster, cluster_redis: HostRedis, worker_image: str, operator: str, namespace: str
) -> Iterator[Any]:
    watches: list[ReplicaWatch] = []

    def make(name: str, **scaling: Any) -> ReplicaWatch:
        cluster.apply(queue_manifest(name, worker_image, cluster_redis.url_for_pods, **scaling),
                      namespace)
        cluster.wait_for(
            lambda: cluster.kubectl("get", "deployment", f"bgq-{name}", "-n", namespace,
                                    check=False).returncode == 0,
            30, "the worker Deployment")
        # ready to decide: the first decision (at zero) is in the status
        cluster.wait_for(
            lambda: cluster.get_json("backgroundqueue", name, "-n", namespace)
            .get("status", {}).get("scaling", {}).get("boundBy"),
            30, "the first scaling decision")
        watch = ReplicaWatch(cluster, namespace, f"bgq-{name}")
        watch.start()
        watches.append(watch)
        assert watch.values() == [0]
        return watch

    try:
        yield make
    finally:
        for w in watches:
            w.stop()


def running_ready(cluster: Cluster, namespace: str, name: str) -> list[str]:
    names = []
    for pod in cluster.pods(namespace, SELECTOR.format(name=name)):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        conds = pod.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
            names.append(pod["metadata"]["name"])
    return names


def ready_count(cluster: Cluster, namespace: str, name: str, n: int) -> list[str] | None:
    """The ready, not deleting, worker pods when there are exactly ``n``, else None."""
    pods = running_ready(cluster, namespace, name)
    return pods if len(pods) == n else None


def wait_pods(cluster: Cluster, namespace: str, name: str, n: int, timeout: float) -> list[str]:
    """Wait for exactly ``n`` ready worker pods; on timeout say what the pods were doing."""
    try:
        return cluster.wait_for(lambda: ready_count(cluster, namespace, name, n), timeout,
                                f"{n} ready worker pods")
    except TimeoutError as exc:
        report = []
        for pod in cluster.pods(namespace, SELECTOR.format(name=name)):
            pname = pod["metadata"]["name"]
            statuses = pod.get("status", {}).get("containerStatuses", [])
            logs = cluster.kubectl("logs", pname, "-n", namespace, "--tail=15",
                                   check=False).stdout
            report.append(f"{pname}: {pod['status'].get('phase')} "
                          f"{json.dumps([s.get('state') for s in statuses])}\n{logs}")
        raise AssertionError(f"{exc}\n" + "\n".join(report)) from exc


def interrupted_metric(operator_url: str) -> float:
    text = urllib.request.urlopen(f"{operator_url}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("bgq_operator_interrupted_jobs_total"))


def test_burst_from_zero_scales_in_one_step(
    cluster: Cluster, cluster_redis: HostRedis, namespace: str, make_queue: Any, operator: str
) -> None:
    name, jobs_n = "burst", 7  # ceil(7 / 2 per pod) = 4 pods
    watch = make_queue(name)
    queue = f"{namespace}/{name}"
    with bgq.Client(cluster_redis.url_for_host) as client:
        t0 = time.monotonic()
        jobs = client.enqueue_many(
            queue, [bgq.JobSpec("sleep", (4,)) for _ in range(jobs_n)])
        t_enqueued = time.monotonic()
        hist = watch.wait(lambda h: h[-1][1] != 0, 10, "a scale-up from zero")
        decision_s = hist[-1][0] - t0
        pods = wait_pods(cluster, namespace, name, 4, 90)
        running_s = time.monotonic() - t0
        results = [client.wait(queue, j.id, timeout=120) for j in jobs]
    # One step, to exactly ceil(demand / jobsPerPod), and nothing in between.
    up_moves = [v for v in watch.values() if v != 0]
    assert up_moves[0] == 4, watch.values()
    assert watch.values()[:2] == [0, 4]
    assert len(pods) == 4
    assert {r["pod"] for r in results} <= set(pods)
    print(f"\nburst of {jobs_n} jobs (enqueue took {t_enqueued - t0:.3f}s): "
          f"enqueue -> decision (Deployment.spec.replicas seen by a watch) {decision_s:.3f}s, "
          f"enqueue -> 4 pods Running+Ready {running_s:.2f}s")
    assert decision_s < 2.0, f"enqueue -> decision took {decision_s:.2f}s"
    status = cluster.get_json("backgroundqueue", name, "-n", namespace)["status"]["scaling"]
    assert status["boundBy"] in ("demand", "scale-down-delay", "idle-before-zero", "busy-pods")
    assert interrupted_metric(operator) == 0


def test_idle_pods_go_first_busy_pod_finishes_then_zero(
    cluster: Cluster, cluster_redis: HostRedis, namespace: str, make_queue: Any, operator: str
) -> None:
    name, long_s = "longjob", 25.0
    watch = make_queue(name)
    queue = f"{namespace}/{name}"
    with bgq.Client(cluster_redis.url_for_host) as client:
        long_job, *short = client.enqueue_many(
            queue, [bgq.JobSpec("sleep", (long_s,))]
            + [bgq.JobSpec("sleep", (2,)) for _ in range(5)])
        watch.wait(lambda h: h[-1][1] == 3, 10, "3 replicas for 6 jobs")
        short_results = [client.wait(queue, j.id, timeout=90) for j in short]
        long_info = client.get(queue, long_job.id)
        assert long_info.started_ms, "the long job started before the short ones finished"
        busy_pod_seen = {r["pod"] for r in short_results}
        # demand drops to the one long job: the idle pods are removed, the busy one stays
        watch.wait(lambda h: h[-1][1] == 1, 30, "scale-down to the one busy pod")
        t_down = time.monotonic()
        info = client.get(queue, long_job.id)
        assert not info.state.final, "the scale-down must come while the long job still runs"
        remaining = wait_pods(cluster, namespace, name, 1, 30)
        result = client.wait(queue, long_job.id, timeout=long_s + 60)
        t_done = time.monotonic()
        done = client.get(queue, long_job.id)
    # The long job ran once, to the end, on the pod that was kept.
    assert result["pod"] == remaining[0]
    assert result["slept"] >= long_s - 0.5
    assert done.attempt in (0, 1) and done.lease_expiries == 0, done
    assert done.started_ms == long_info.started_ms
    assert interrupted_metric(operator) == 0
    assert len(busy_pod_seen | {result["pod"]}) >= 2  # the work was spread: idle pods existed
    # Never zero while the job ran; zero only idleSecondsBeforeZero after it finished.
    hist = watch.wait(lambda h: h[-1][1] == 0, 40, "scale to zero after the job")
    zero_at = hist[-1][0]
    values = [v for _, v in hist]
    # 0 -> 3 in one step, then only down (short jobs end at different times: 3 -> 2 -> 1 is
    # fine), to the one busy pod while its job ran, and to zero only after it finished.
    assert values[:2] == [0, 3], values
    assert values[1:] == sorted(values[1:], reverse=True), values
    assert values[-2:] == [1, 0], values
    assert hist[-2][0] < t_done < zero_at
    idle_s = zero_at - t_done
    print(f"\nscale-down 3 -> 1 while the long job ran ({t_done - t_down:.1f}s before it "
          f"finished); zero {idle_s:.1f}s after it finished (idleSecondsBeforeZero 5)")
    assert idle_s >= 5 - 1.0, f"scaled to zero {idle_s:.1f}s after the last job"


def test_zero_waits_for_in_flight_work(
    cluster: Cluster, cluster_redis: HostRedis, namespace: str, make_queue: Any, operator: str
) -> None:
    """A job longer than scaleDownDelay + idleSecondsBeforeZero keeps its pod to the end."""
    name = "onejob"
    watch = make_queue(name)
    queue = f"{namespace}/{name}"
    with bgq.Client(cluster_redis.url_for_host) as client:
        job = client.enqueue(queue, "sleep", 12)
        watch.wait(lambda h: h[-1][1] == 1, 10, "one pod")
        result = client.wait(queue, job.id, timeout=90)
        t_done = time.monotonic()
        info = client.get(queue, job.id)
    hist = watch.wait(lambda h: h[-1][1] == 0, 40, "scale to zero")
    assert [v for _, v in hist] == [0, 1, 0]
    assert hist[-1][0] - t_done >= 5 - 1.0
    assert result["slept"] >= 11.5 and info.lease_expiries == 0
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             f"involvedObject.name={name}", "-o", "json").stdout
    messages = [e.get("message", "") for e in json.loads(events)["items"]]
    assert any("0 -> 1" in m for m in messages) and any("1 -> 0" in m for m in messages), \
        messages


@pytest.fixture(scope="module")
def pod_redis_cluster(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real 3-primary + 3-replica Redis Cluster on the pod-bridge address inside the cluster's
    network namespace, so worker pods (and the operator, a host process there) follow its
    MOVED redirections to every node; the test reaches it through loopback portals
    (:func:`host_settings`)."""
    from tests.conftest import start_redis_cluster

    servers = start_redis_cluster(tmp_path_factory.mktemp("pod-cluster"), host=cluster.host_ip,
                                  netns_path=cluster.netns_path)
    yield servers
    for node in servers.nodes:
        node.stop()


@contextlib.contextmanager
def host_settings(servers: Any) -> Iterator[Any]:
    """Settings for the test process's own client of ``servers``. The test runs outside the
    cluster's network namespace and reaches each node through its loopback portal (same port),
    so the addresses the nodes announce (the pods' gateway) are mapped to 127.0.0.1 with
    redis-py's ``address_remap``, as for any client behind NAT."""
    import bgq.connection
    from bgq.settings import RedisMode, RedisSettings

    ports = {n.port for n in servers.nodes}
    original = bgq.connection._options

    def remap(addr: tuple[str, int]) -> tuple[str, int]:
        return ("127.0.0.1", addr[1]) if addr[1] in ports else addr

    def options(s: RedisSettings) -> dict[str, Any]:
        opts = original(s)
        if s.mode is RedisMode.CLUSTER:
            opts["address_remap"] = remap
        return opts

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bgq.connection, "_options", options)
        yield RedisSettings(mode=RedisMode.CLUSTER, url=f"redis://127.0.0.1:{servers.nodes[0].port}",
                            nodes=",".join(f"127.0.0.1:{n.port}" for n in servers.nodes[1:3]))


def test_a_cluster_mode_queue_autoscales_and_drains_like_standalone(
    cluster: Cluster, pod_redis_cluster: Any, worker_image: str, namespace: str, operator: str
) -> None:
    """``spec.redis.mode: Cluster`` on the real cluster: 0 -> N in one step, the idle pods go
    first while the busy one finishes its job (drain), every job runs once, then zero."""
    name = "clustered"
    manifest = queue_manifest(name, worker_image, pod_redis_cluster.seed_url)
    manifest["spec"]["redis"] = {
        "url": pod_redis_cluster.seed_url, "mode": "Cluster",
        "nodes": pod_redis_cluster.other_seeds.split(","),
    }  # fmt: skip
    cluster.apply(manifest, namespace)
    cluster.wait_for(
        lambda: cluster.get_json("backgroundqueue", name, "-n", namespace)
        .get("status", {}).get("scaling", {}).get("boundBy"),
        60, "the first scaling decision (on the cluster)")  # fmt: skip
    watch = ReplicaWatch(cluster, namespace, f"bgq-{name}")
    watch.start()
    queue = f"{namespace}/{name}"
    try:
        with host_settings(pod_redis_cluster) as settings, \
                bgq.Client(redis_settings=settings) as client:
            long_job, *short = client.enqueue_many(
                queue, [bgq.JobSpec("sleep", (15,))] + [bgq.JobSpec("sleep", (2,))] * 5)
            watch.wait(lambda h: h[-1][1] == 3, 15, "3 replicas for 6 jobs, in one step")
            short_results = [client.wait(queue, j.id, timeout=90) for j in short]
            watch.wait(lambda h: h[-1][1] == 1, 40, "scale-down to the one busy pod")
            assert not client.get(queue, long_job.id).state.final
            result = client.wait(queue, long_job.id, timeout=90)
            done = client.get(queue, long_job.id)
            infos = [client.get(queue, j.id) for j in short]
        hist = watch.wait(lambda h: h[-1][1] == 0, 40, "scale to zero after the job")
    finally:
        watch.stop()
    values = [v for _, v in hist]
    assert values[:2] == [0, 3], values
    assert values[1:] == sorted(values[1:], reverse=True), values
    assert result["slept"] >= 14.5 and done.lease_expiries == 0 and done.attempt in (0, 1)
    assert all(i.attempt in (0, 1) and i.lease_expiries == 0 for i in infos)  # each ran once
    assert len({r["pod"] for r in short_results} | {result["pod"]}) >= 2
    assert interrupted_metric(operator) == 0
    status = cluster.get_json("backgroundqueue", name, "-n", namespace)["status"]
    ready = {c["type"]: c for c in status["conditions"]}
    assert ready["RedisReachable"]["status"] == "True", ready
