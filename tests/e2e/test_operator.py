"""The operator on the real cluster: CRD validation, reconcile, workers running jobs, status, GC.

The operator runs on the host (``python -m bgq_operator --namespace <test ns>``) against the real
API server; worker pods run the project image and reach the host's redis-server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import free_port
from tests.e2e.kube import Cluster, HostRedis, stop_process

import bgq

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "backgroundqueues.bgq.dev.yaml"
SELECTOR = "app.kubernetes.io/name=bgq-worker,app.kubernetes.io/instance={name}"


def queue_manifest(name: str, image: str, redis_url: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "redis": {"url": redis_url},
        "worker": {
            "image": image,
            "imagePullPolicy": "Never",
            "tasksModule": "e2e_tasks",
            "concurrency": 2,
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        },
        "scaling": {"minReplicas": 0, "maxReplicas": 3, "scaleDownDelaySeconds": 5,
                    "idleSecondsBeforeZero": 5},
        "drainSeconds": 5,
    }  # fmt: skip
    for path, value in overrides.items():
        node = spec
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return {
        "apiVersion": "bgq.dev/v1alpha1",
        "kind": "BackgroundQueue",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                    "crd/backgroundqueues.bgq.dev")  # fmt: skip


class OperatorProcess:
    """``python -m bgq_operator`` as a host process, watching one namespace."""

    def __init__(self, cluster: Cluster, namespace: str, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        # inside the cluster's network namespace: it reaches the queues' Redis at the pods'
        # address; its HTTP port is forwarded to the host's loopback
        self.proc = cluster.netns_process(
            [sys.executable, "-m", "bgq_operator", "--namespace", namespace,
             "--http-host", "127.0.0.1", "--http-port", str(self.port)],
            ports=[self.port], env={"BGQ_LOG_LEVEL": "INFO"},
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc, 15)
        self._log.close()


@pytest.fixture
def operator(cluster: Cluster, crd: None, namespace: str, tmp_path: Path) -> Iterator[str]:
    """The operator as a host process watching only the test namespace; yields its base URL."""
    op = OperatorProcess(cluster, namespace, tmp_path / "operator.log")
    try:
        yield op.url
    finally:
        op.stop()
        sys.stderr.write(op.log_path.read_text(errors="replace")[-4000:])


def get_queue(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.get_json("backgroundqueue", name, "-n", namespace)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return dict(cond)
    return None


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("scaling.minReplicas", 5, "minReplicas must be <= spec.scaling.maxReplicas"),
        ("worker.image", None, "spec.worker.image: Required value"),
        ("worker.env", [{"name": "BGQ_QUEUE", "value": "x"}], "spec.worker.env"),
        ("redis.urlSecretRef", {"name": "s", "key": "url"}, "exactly one of spec.redis.url"),
        ("scaling.onRedisUnavailable", "Explode", "spec.scaling.onRedisUnavailable"),
    ],
)
def test_invalid_manifests_are_rejected_naming_the_field(
    cluster: Cluster, crd: None, namespace: str, path: str, value: Any, needle: str
) -> None:
    manifest = queue_manifest("bad", "img", "redis://r:6379/0", **{path: value})
    if value is None:
        del manifest["spec"]["worker"]["image"]
    proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest),
                           check=False)  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert needle in proc.stderr, proc.stderr


def test_queue_lifecycle(
    cluster: Cluster, cluster_redis: HostRedis, worker_image: str, operator: str, namespace: str
) -> None:
    name = "orders"
    cluster.apply(queue_manifest(name, worker_image, cluster_redis.url_for_pods), namespace)

    # 1. the Deployment appears with the contract's shape, at minReplicas (0)
    dep = cluster.wait_for(
        lambda: cluster.kubectl("get", "deployment", f"bgq-{name}", "-n", namespace, "-o",
                                "json", check=False).stdout or None,
        30, "the worker Deployment",
    )  # fmt: skip
    deployment = json.loads(dep)
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "BackgroundQueue"
    assert deployment["spec"]["replicas"] == 0
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 10
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["BGQ_QUEUE"] == f"{namespace}/{name}"
    assert env["BGQ_DRAIN_SECONDS"] == "5"
    assert all(k.startswith("BGQ_") for k in env)

    # 2. status: Ready (scaled to zero), RedisReachable
    cluster.wait_for(
        lambda: (condition(get_queue(cluster, namespace, name), "Ready") or {}).get("status")
        == "True",
        30, "Ready=True at zero replicas",
    )  # fmt: skip

    # 3. jobs wake the operator, pods start and process them
    queue = f"{namespace}/{name}"
    with bgq.Client(cluster_redis.url_for_host) as client:
        started = time.monotonic()
        jobs = [client.enqueue(queue, "record", i) for i in range(5)]
        scaled = cluster.wait_for(
            lambda: (cluster.get_json("deployment", f"bgq-{name}", "-n", namespace)["spec"]
                     ["replicas"]) or None,
            10, "a scale-up from zero",
        )  # fmt: skip
        decision_s = time.monotonic() - started
        assert scaled == 3, "ceil(5 jobs / 2 per pod) = 3 in one step"
        results = [client.wait(queue, job.id, timeout=120) for job in jobs]
    assert [r["value"] for r in results] == list(range(5))
    assert all(r["pod"].startswith(f"bgq-{name}-") for r in results)
    print(f"enqueue -> scale decision visible via kubectl: {decision_s:.2f}s")

    # 4. status shows the figures and Ready=True with workers
    def settled() -> dict[str, Any] | None:
        obj = get_queue(cluster, namespace, name)
        status = obj.get("status", {})
        ready = condition(obj, "Ready") or {}
        ok = (
            ready.get("status") == "True"
            and status.get("queue", {}).get("backlog") == 0
            and status.get("scaling", {}).get("boundBy")
        )
        return obj if ok else None

    obj = cluster.wait_for(settled, 60, "status with queue figures and Ready=True")
    status = obj["status"]
    assert status["queue"]["name"] == queue
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["selector"] == SELECTOR.format(name=name)
    assert condition(obj, "RedisReachable")["status"] == "True"  # type: ignore[index]
    printed = cluster.kubectl("get", "bgq", name, "-n", namespace).stdout
    assert "READY" in printed and "BACKLOG" in printed

    # operator health and metrics
    assert httpx.get(f"{operator}/healthz", timeout=5).text == "ok\n"
    scrape = httpx.get(f"{operator}/metrics", timeout=5).text
    labels = f'namespace="{namespace}",queue="{name}"'
    assert f"bgq_operator_desired_replicas{{{labels}}}" in scrape
    assert f'bgq_operator_scale_events_total{{direction="up",{labels}}} 1.0' in scrape
    assert "bgq_operator_decision_seconds_count" in scrape

    # 5. drift on the Deployment is put back, replicas untouched
    cluster.kubectl("set", "env", f"deployment/bgq-{name}", "-n", namespace, "HACK=1")
    cluster.wait_for(
        lambda: "HACK" not in cluster.kubectl("get", "deployment", f"bgq-{name}", "-n",
                                              namespace, "-o", "json").stdout,
        45, "the operator to undo an edit of the Deployment",
    )  # fmt: skip

    # 6. delete: the workers go with it (ownerReference GC, no finalizer to wait on)
    assert not obj["metadata"].get("finalizers")
    cluster.kubectl("delete", "backgroundqueue", name, "-n", namespace, "--wait=true",
                    "--timeout=30s")  # fmt: skip
    cluster.wait_for(
        lambda: cluster.kubectl("get", "deployment", f"bgq-{name}", "-n", namespace,
                                check=False).returncode != 0,
        60, "the Deployment to be garbage-collected",
    )  # fmt: skip


def test_missing_secret_gives_a_condition_not_a_crash(
    cluster: Cluster, worker_image: str, operator: str, namespace: str
) -> None:
    manifest = queue_manifest("secretive", worker_image, "")
    manifest["spec"]["redis"] = {"urlSecretRef": {"name": "nope", "key": "url"}}
    cluster.apply(manifest, namespace)

    def not_ready() -> dict[str, Any] | None:
        cond = condition(get_queue(cluster, namespace, "secretive"), "Ready")
        return cond if cond and cond["reason"] == "SecretMissing" else None

    cond = cluster.wait_for(not_ready, 30, "Ready=False/SecretMissing")
    assert cond["status"] == "False"
    assert "nope" in cond["message"]
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.name=secretive").stdout  # fmt: skip
    assert "NotReady" in events


def test_kubectl_scale_when_autoscaling_is_off_and_explain(
    cluster: Cluster, cluster_redis: HostRedis, worker_image: str, operator: str, namespace: str
) -> None:
    manifest = queue_manifest("manual", worker_image, cluster_redis.url_for_pods,
                              **{"scaling.enabled": False})  # fmt: skip
    manifest["spec"]["replicas"] = 0
    cluster.apply(manifest, namespace)

    def replicas() -> int | None:
        proc = cluster.kubectl("get", "deployment", "bgq-manual", "-n", namespace, "-o",
                               "jsonpath={.spec.replicas}", check=False)  # fmt: skip
        return int(proc.stdout) if proc.returncode == 0 and proc.stdout else None

    assert cluster.wait_for(lambda: replicas() == 0, 30, "the Deployment at 0")
    cluster.kubectl("scale", "backgroundqueue/manual", "-n", namespace, "--replicas=1")
    cluster.wait_for(lambda: replicas() == 1, 15, "kubectl scale to reach the Deployment")
    obj = get_queue(cluster, namespace, "manual")
    cluster.wait_for(
        lambda: get_queue(cluster, namespace, "manual").get("status", {}).get("scaling", {})
        .get("boundBy") == "manual",
        15, "boundBy=manual",
    )  # fmt: skip
    assert obj["spec"]["replicas"] == 1
    explained = cluster.kubectl("explain", "backgroundqueue.spec.scaling").stdout
    assert "minReplicas" in explained and "Fewest worker pods" in explained


def test_restart_keeps_conditions_and_delete_works_while_the_operator_is_down(
    cluster: Cluster,
    cluster_redis: HostRedis,
    worker_image: str,
    crd: None,
    namespace: str,
    tmp_path: Path,
) -> None:
    name = "sturdy"
    log = tmp_path / "operator.log"
    first = OperatorProcess(cluster, namespace, log)
    try:
        cluster.apply(queue_manifest(name, worker_image, cluster_redis.url_for_pods), namespace)
        ready = cluster.wait_for(
            lambda: (c := condition(get_queue(cluster, namespace, name), "Ready"))
            and c["status"] == "True" and c,
            30, "Ready=True",
        )  # fmt: skip
    finally:
        first.stop()

    second = OperatorProcess(cluster, namespace, log)
    try:
        cluster.kubectl("patch", "backgroundqueue", name, "-n", namespace, "--type=merge",
                        "-p", '{"spec":{"worker":{"concurrency":3}}}')  # fmt: skip
        cluster.wait_for(
            lambda: "BGQ_CONCURRENCY" in (out := cluster.kubectl(
                "get", "deployment", f"bgq-{name}", "-n", namespace, "-o",
                "jsonpath={.spec.template.spec.containers[0].env[?(@.name=='BGQ_CONCURRENCY')]}",
            ).stdout) and '"3"' in out,
            30, "the restarted operator to apply a spec change",
        )  # fmt: skip
        obj = cluster.wait_for(
            lambda: (o := get_queue(cluster, namespace, name))["status"]["observedGeneration"]
            == o["metadata"]["generation"] and o,
            30, "status of the new generation",
        )  # fmt: skip
        after = condition(obj, "Ready")
        assert after is not None and after["status"] == "True"
        assert after["lastTransitionTime"] == ready["lastTransitionTime"]
        events = cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            f"involvedObject.name={name},reason=Ready",
            "-o",
            "name",
        ).stdout
        assert len(events.split()) == 1, f"one Ready event across the restart: {events}"
    finally:
        second.stop()
        sys.stderr.write(log.read_text(errors="replace")[-3000:])

    # the operator is down: deletion must not hang on a finalizer; GC removes the workers
    assert not get_queue(cluster, namespace, name)["metadata"].get("finalizers")
    cluster.kubectl("delete", "backgroundqueue", name, "-n", namespace, "--timeout=15s")
    cluster.wait_for(
        lambda: cluster.kubectl("get", "deployment", f"bgq-{name}", "-n", namespace,
                                check=False).returncode != 0,
        60, "the Deployment to be garbage-collected with the operator down",
    )  # fmt: skip
