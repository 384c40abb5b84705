"""Bringing up what the demo runs on: the local cluster, the images, the chart, the queue.

Every step is idempotent, so `make demo` can be rerun at any point: ``hack/cluster/up`` leaves a
running cluster alone, ``build-image`` rebuilds only what changed, ``helm upgrade --install``
converges the release, ``kubectl apply`` the queue. The cluster machinery (kubectl and helm
wrappers, the settings of ``hack/cluster/env``) is the e2e tests' own (``tests/e2e/kube.py``), so
the demo and the tests cannot drift apart.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from tests.e2e.kube import Cluster, ClusterError, cluster_is_up, load_cluster, wait_for

ROOT = Path(__file__).resolve().parents[3]
HACK = ROOT / "hack" / "cluster"
DEMO = ROOT / "examples" / "demo"
CHART = ROOT / "charts" / "bgq"
CRD = ROOT / "crds" / "backgroundqueues.bgq.dev.yaml"
RELEASE = "bgq"  # not "bgq-demo": the queue "demo" has its worker Deployment "bgq-demo"
QUEUE = "demo"


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and what to look at."""


def stream(console: Console, argv: list[str], what: str, env: Mapping[str, str] | None = None,
           timeout: float = 3600) -> str:
    """Run ``argv`` showing its progress (stderr) indented; return its stdout's last line."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    tail: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if not line.strip():
                continue
            tail.append(line)
            del tail[:-40]
            console.print(f"    {line.rstrip()}", style="dim", markup=False, highlight=False)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise DemoError(f"{what}: no result after {timeout:.0f} s") from None
    reader.join(timeout=5)
    if proc.returncode != 0:
        raise DemoError(f"{what} failed (exit {proc.returncode}):\n{''.join(tail)}")
    lines = out.strip().splitlines()
    return lines[-1] if lines else ""


@dataclass
class Step:
    """Prints "▸ title ... done in N s" around a piece of the set-up."""

    console: Console
    timings: dict[str, float] = field(default_factory=dict)

    def __call__(self, title: str, fn: Callable[[], Any]) -> Any:
        self.console.print(f"[bold cyan]▸[/] {title}")
        t0 = time.monotonic()
        result = fn()
        took = time.monotonic() - t0
        self.timings[title] = round(took, 1)
        self.console.print(f"  [green]✓[/] {took:.1f} s")
        return result


def cluster_up(console: Console) -> Cluster:
    """``hack/cluster/up`` (a no-op on a running cluster), then the cluster's settings."""
    if cluster_is_up():
        console.print("  the local cluster is already running")
    else:
        stream(console, [str(HACK / "up")], "hack/cluster/up")
    return load_cluster()


def build_images(console: Console) -> dict[str, str]:
    """Operator, worker, Redis and the demo's tasks image, imported into containerd."""
    images = {}
    for kind, args in (("operator", []), ("worker", []), ("redis", []),
                       ("tasks", [str(DEMO)])):
        images[kind] = stream(console, [str(HACK / "build-image"), kind, *args],
                              f"hack/cluster/build-image {kind}")
        console.print(f"    {kind:<9} {images[kind]}", markup=False, highlight=False)
    return images


def split(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def install_chart(console: Console, cluster: Cluster, namespace: str,
                  images: Mapping[str, str]) -> None:
    """The namespace (restricted Pod Security), the CRD, then the chart with the demo values.

    The CRD is applied from ``crds/`` with server-side apply rather than by the release
    (``crds.install=false`` in the values): on a cluster that already has it (the e2e tests
    share it) a release cannot adopt it, and the demo must not take it away on uninstall.
    """
    def phase() -> str:
        got = cluster.kubectl("get", "namespace", namespace, "-o", "jsonpath={.status.phase}",
                              check=False)
        return got.stdout.strip() if got.returncode == 0 else ""

    if phase() == "Terminating":  # a `make demo-down` moments ago
        console.print(f"    waiting for the old namespace {namespace} to be gone")
        wait_for(lambda: phase() != "Terminating", 180, f"namespace {namespace} to go", 1)
    if not phase():
        cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("label", "--overwrite", "namespace", namespace,
                    "pod-security.kubernetes.io/enforce=restricted")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established",
                    "crd/backgroundqueues.bgq.dev", "--timeout=60s")
    settings = []
    for key, kind in (("image", "operator"), ("worker.image", "worker"),
                      ("redis.image", "redis")):
        repository, tag = split(images[kind])
        settings += ["--set", f"{key}.repository={repository}", "--set", f"{key}.tag={tag}"]
    argv = ["upgrade", "--install", RELEASE, str(CHART), "--namespace", namespace,
            "-f", str(DEMO / "values.yaml"), *settings,
            "--set", f"operator.watchNamespaces[0]={namespace}", "--wait", "--timeout", "240s"]
    result = cluster.helm(*argv, check=False, timeout=300)
    if result.returncode != 0 and "has no deployed releases" in result.stderr:
        # an earlier first install failed half-way: start that release over
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False, timeout=150)
        result = cluster.helm(*argv, check=False, timeout=300)
    if result.returncode != 0:
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
        raise DemoError(f"helm upgrade --install failed: {result.stderr.strip()}\n{pods}")
    console.print(f"    release {RELEASE} in namespace {namespace}: operator, Redis, gateway",
                  markup=False, highlight=False)


def queue_manifest(namespace: str, image: str, short: bool, scenario: str) -> dict[str, Any]:
    """examples/demo/queue.yaml with the image just built (and the short mode's timings)."""
    queue: dict[str, Any] = yaml.safe_load((DEMO / "queue.yaml").read_text())
    queue["metadata"]["namespace"] = namespace
    queue["spec"]["worker"]["image"] = image
    scaling = queue["spec"]["scaling"]
    if short:
        # small and quick: the e2e test runs this inside `make test`
        scaling.update({"maxReplicas": 3, "scaleDownDelaySeconds": 3,
                        "idleSecondsBeforeZero": 3})
    if scenario == "drain":
        queue["spec"]["worker"]["concurrency"] = 4
        scaling["jobsPerPod"] = 4
    return queue


def apply_queue(cluster: Cluster, namespace: str, queue: dict[str, Any]) -> None:
    """Apply the BackgroundQueue and wait until the operator reconciled it (Deployment made)."""
    cluster.apply(queue)
    name = queue["metadata"]["name"]

    def reconciled() -> bool:
        obj = cluster.get_json("backgroundqueue", name, "-n", namespace)
        status = obj.get("status", {})
        return (status.get("observedGeneration") == obj["metadata"]["generation"]
                and cluster.kubectl("get", "deployment", f"bgq-{name}", "-n", namespace,
                                    check=False).returncode == 0)

    try:
        wait_for(reconciled, 90, f"the operator to reconcile BackgroundQueue {name}", 0.5)
    except TimeoutError as exc:
        logs = cluster.kubectl("logs", "-n", namespace, "-l",
                               "app.kubernetes.io/component=operator", "--tail=40", check=False)
        raise DemoError(f"{exc}\noperator log:\n{logs.stdout or logs.stderr}") from None


def service_ip(cluster: Cluster, namespace: str, name: str) -> str:
    """A Service's ClusterIP (reached from inside the cluster's network namespace, through
    kube-proxy like a pod would)."""
    ip = str(cluster.get_json("service", name, "-n", namespace)["spec"]["clusterIP"])
    if not ip or ip == "None":
        raise ClusterError(f"service {namespace}/{name} has no ClusterIP")
    return ip


def uninstall(console: Console, cluster: Cluster, namespace: str) -> None:
    """Queues first (while the operator runs), then the release, then the namespace."""
    if cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        console.print(f"  namespace {namespace} is not there: nothing to remove")
        return
    cluster.kubectl("delete", "backgroundqueue", "--all", "-n", namespace, "--timeout=60s",
                    check=False)
    cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s",
                 check=False, timeout=150)
    cluster.kubectl("delete", "namespace", namespace, "--timeout=120s", check=False,
                    timeout=150)
    console.print(f"  removed release {RELEASE} and namespace {namespace}")
