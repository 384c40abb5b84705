"""The chart on the real cluster, installed the way users install it.

The operator runs IN the cluster (from ``operator_image``, deployed by ``helm install``), talks
to the API server through its ServiceAccount, and reconciles an example BackgroundQueue from
``examples/`` whose workers (``worker_image``) run ``examples/tasks.py``. A job is enqueued from
a pod inside the cluster; then ``helm test`` must pass and ``helm uninstall`` must leave nothing
of the release behind except the CRD (documented in docs/helm.md).

Both RBAC scopes are installed (Role + RoleBinding, or ClusterRole + ClusterRoleBinding); the
operator watches only the test's namespace either way, so that it never competes with the
operators other e2e tests run on the same cluster. The CRD is
applied from ``crds/`` beforehand and shared (``crds.install=false``), as docs/helm.md
describes for a cluster with more than one bgq installation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.kube import Cluster, HostRedis

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "bgq"
EXAMPLES = ROOT / "examples"
RELEASE = "bgq-e2e"
CRD_NAME = "backgroundqueues.bgq.dev"

RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def split_image(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def example_queue(namespace: str, redis_url: str, worker_image: str) -> list[dict[str, Any]]:
    """examples/backgroundqueue-full.yaml, pointed at the test Redis and the project image.

    The stock worker image does not contain examples/tasks.py (users build their own image
    FROM it, see examples/Dockerfile); without a Docker engine here, the module's source goes
    in through an environment variable and is written to /tmp when the worker starts.
    """
    docs = list(yaml.safe_load_all((EXAMPLES / "backgroundqueue-full.yaml").read_text()))
    secret = next(d for d in docs if d["kind"] == "Secret")
    queue = next(d for d in docs if d["kind"] == "BackgroundQueue")
    for doc in (secret, queue):
        doc["metadata"]["namespace"] = namespace
    secret["stringData"]["url"] = redis_url
    worker = queue["spec"]["worker"]
    worker["image"] = worker_image
    worker["imagePullPolicy"] = "Never"
    worker["command"] = ["/bin/sh", "-c"]
    worker["args"] = [
        'printf "%s\\n" "$EXAMPLE_TASKS" > /tmp/tasks.py && '
        'export PYTHONPATH="/tmp${PYTHONPATH:+:$PYTHONPATH}" && exec bgq worker'
    ]
    worker["env"] = [
        *worker.get("env", []),
        {"name": "EXAMPLE_TASKS", "value": (EXAMPLES / "tasks.py").read_text()},
    ]
    worker["resources"] = {"requests": {"cpu": "10m", "memory": "64Mi"}}
    # one small pod is enough here and keeps the shared single node free
    queue["spec"]["scaling"].update({"maxReplicas": 1, "idleHeadroom": 0})
    return [secret, queue]


def enqueue_pod(
    namespace: str, redis_url: str, worker_image: str, name: str, argv: list[str]
) -> dict[str, Any]:
    """A pod that runs the ``bgq`` CLI once from the worker image, restricted like the chart's."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "bgq",
                    "image": worker_image,
                    "imagePullPolicy": "Never",
                    "command": ["bgq", *argv],
                    "env": [{"name": "BGQ_REDIS_URL", "value": redis_url}],
                    "securityContext": RESTRICTED_CONTAINER,
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def pod_finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    pod = cluster.get_json("pod", name, "-n", namespace)
    return pod if pod["status"].get("phase") in {"Succeeded", "Failed"} else None


def leftovers(cluster: Cluster, namespace: str) -> list[str]:
    """Everything still labelled as part of the release, cluster-wide and in its namespace."""
    selector = f"app.kubernetes.io/instance={RELEASE}"
    found = []
    namespaced = (
        "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,"
        "configmaps,secrets,backgroundqueues"
    )
    labelled: list[tuple[str, ...]] = [
        ("get", namespaced, "-n", namespace, "-l", selector, "-o", "name"),
        ("get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name"),
    ]
    for args in labelled:
        found += cluster.kubectl(*args).stdout.split()
    # hook objects are named after the release; so are the RBAC objects
    named: list[tuple[str, ...]] = [
        ("get", "pods,backgroundqueues,deployments", "-n", namespace, "-o", "name"),
        ("get", "clusterroles,clusterrolebindings", "-o", "name"),
    ]
    for args in named:
        found += [n for n in cluster.kubectl(*args).stdout.split() if f"/{RELEASE}" in n]
    return sorted(set(found))


def operator_problem(pod: dict[str, Any]) -> str | None:
    """Why the operator pod cannot become ready (crash loop, image missing), or None."""
    for status in pod.get("status", {}).get("containerStatuses", []):
        waiting = status.get("state", {}).get("waiting", {})
        if waiting.get("reason") in {
            "CrashLoopBackOff",
            "ErrImageNeverPull",
            "ImagePullBackOff",
            "CreateContainerConfigError",
            "InvalidImageName",
        }:
            return f"{waiting['reason']}: {waiting.get('message', '')}"
        if status.get("restartCount", 0) >= 2:
            return f"restarted {status['restartCount']} times"
    return None


def wait_operator_ready(cluster: Cluster, namespace: str) -> None:
    """Wait for the in-cluster operator pod to be Ready; fail at once (with its logs) if it
    crash-loops instead of waiting out the timeout."""

    def ready() -> bool:
        pods = cluster.pods(namespace, "app.kubernetes.io/component=operator")
        for pod in pods:
            problem = operator_problem(pod)
            if problem:
                name = pod["metadata"]["name"]
                logs = cluster.kubectl("logs", "-n", namespace, name, "--previous", check=False)
                raise AssertionError(
                    f"operator pod {name}: {problem}\n{(logs.stdout or logs.stderr)[-4000:]}"
                )
        return len(pods) == 1 and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pods[0].get("status", {}).get("conditions", [])
        )

    deadline = time.monotonic() + 120
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError("the operator pod did not become Ready within 120 s")
        time.sleep(0.5)


def prepare_namespace(cluster: Cluster, namespace: str) -> None:
    """Install the CRD and make ``namespace`` enforce the "restricted" Pod Security level.

    The chart is installed with ``crds.install=false``, so the CRD is applied here and waited on
    until Established. Every pod of the release, the test hooks and the workers must pass
    "restricted".
    """
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / f"{CRD_NAME}.yaml")
    )
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s")
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )


@pytest.mark.parametrize("scope", ["namespaced", "cluster"])
def test_helm_install_example_queue_helm_test_uninstall(
    scope: str,
    cluster: Cluster,
    cluster_redis: HostRedis,
    operator_image: str,
    worker_image: str,
    namespace: str,
) -> None:
    prepare_namespace(cluster, namespace)
    op_repo, op_tag = split_image(operator_image)
    wk_repo, wk_tag = split_image(worker_image)
    install = cluster.helm(
        "install", RELEASE, str(CHART),
        "--namespace", namespace,
        "--set", f"image.repository={op_repo}", "--set", f"image.tag={op_tag}",
        "--set", "image.pullPolicy=Never",
        "--set", f"worker.image.repository={wk_repo}", "--set", f"worker.image.tag={wk_tag}",
        "--set", "worker.image.pullPolicy=Never",
        "--set", f"rbac.scope={scope}",
        # cluster scope: a ClusterRole, but the operator still watches only this namespace
        "--set", f"operator.watchNamespaces[0]={namespace}",
        "--set", "crds.install=false",
        "--set", f"tests.redisUrl={cluster_redis.url_for_pods}",
        "--set", "operator.logLevel=DEBUG",
        check=False, timeout=120,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    assert f"helm test {RELEASE} -n {namespace}" in install.stdout  # NOTES: the next command
    rbac = "clusterrole,clusterrolebinding" if scope == "cluster" else "role,rolebinding"
    rbac_objects = cluster.kubectl("get", rbac, "-n", namespace, "-o", "name").stdout.split()
    assert len([o for o in rbac_objects if o.endswith(f"/{RELEASE}")]) == 2, rbac_objects
    try:
        wait_operator_ready(cluster, namespace)
        run_example_and_helm_test(cluster, cluster_redis, worker_image, namespace)
        metrics_service_serves_the_operator_metrics(cluster, namespace, worker_image)
        upgrade_replaces_the_operator(cluster, namespace)
    except BaseException:
        for pod in cluster.pods(namespace, "app.kubernetes.io/component=operator"):
            print(cluster.logs(namespace, pod["metadata"]["name"])[-6000:])
        # Remove the queues while the operator still runs, so their finalizers cannot hold
        # the namespace in Terminating after the release is gone.
        cluster.kubectl("delete", "bgq", "--all", "-n", namespace, "--timeout=60s", check=False)
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--timeout", "60s", check=False)
        raise

    # Queues first, while the operator still runs (docs/helm.md, "Uninstall").
    cluster.kubectl("delete", "backgroundqueue", "reports", "-n", namespace, "--timeout=60s")
    cluster.wait_for(
        lambda: not cluster.pods(namespace, "bgq.dev/queue=reports"), 60, "example workers gone"
    )
    uninstall = cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s")
    assert "uninstalled" in uninstall.stdout
    cluster.wait_for(
        lambda: not leftovers(cluster, namespace) or None,
        60,
        "nothing of the release left after helm uninstall",
    )
    # the CRD stays (documented): the other installations and their queues rely on it
    assert cluster.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0


def metrics_service_serves_the_operator_metrics(
    cluster: Cluster, namespace: str, worker_image: str
) -> None:
    """The chart's metrics Service reaches the operator's /metrics from another pod (through
    kube-proxy; by ClusterIP, the test cluster has no DNS). Python from the worker image does
    the GET: the static busybox's wget crashes (SIGSEGV) on this node."""
    service = cluster.get_json("service", f"{RELEASE}-metrics", "-n", namespace)
    ip, port = service["spec"]["clusterIP"], service["spec"]["ports"][0]["port"]
    get = (
        "import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "scrape", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "get",
                    "image": worker_image,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", get, f"http://{ip}:{port}/metrics"],
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
        },
    }
    cluster.apply(pod)
    finished = cluster.wait_for(
        lambda: pod_finished(cluster, namespace, "scrape"), 60, "the metrics scrape pod"
    )
    body = cluster.logs(namespace, "scrape")
    assert finished["status"]["phase"] == "Succeeded", body
    assert "bgq_operator_reconciles_total" in body, body[:2000]
    cluster.kubectl("delete", "pod", "scrape", "-n", namespace, "--wait=false")


def upgrade_replaces_the_operator(cluster: Cluster, namespace: str) -> None:
    """`helm upgrade` of a value rolls the operator (Recreate: the old pod goes first)."""
    (old,) = cluster.pods(namespace, "app.kubernetes.io/component=operator")
    upgrade = cluster.helm(
        "upgrade", RELEASE, str(CHART), "-n", namespace, "--reuse-values",
        "--set", "operator.logLevel=INFO", check=False, timeout=120,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stderr
    wait_operator_ready(cluster, namespace)
    (new,) = cluster.pods(namespace, "app.kubernetes.io/component=operator")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    env = {e["name"]: e.get("value") for e in new["spec"]["containers"][0]["env"]}
    assert env["BGQ_LOG_LEVEL"] == "INFO"


def run_example_and_helm_test(
    cluster: Cluster, cluster_redis: HostRedis, worker_image: str, namespace: str
) -> None:
    # the operator pod really is restricted and runs as the chart's ServiceAccount
    (operator,) = cluster.pods(namespace, "app.kubernetes.io/component=operator")
    assert operator["spec"]["serviceAccountName"] == RELEASE
    assert operator["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    # an example BackgroundQueue, reconciled by the in-cluster operator
    cluster.apply(example_queue(namespace, cluster_redis.url_for_pods, worker_image))
    cluster.wait_for(
        lambda: (
            cluster.kubectl(
                "get", "deployment", "bgq-reports", "-n", namespace, check=False
            ).returncode
            == 0
        ),
        60,
        "the operator to create the example's worker Deployment",
    )

    # enqueue from inside the cluster and wait for the result (the queue scales up from zero)
    job_id = "e2e-helm-add"
    cluster.apply(
        enqueue_pod(
            namespace,
            cluster_redis.url_for_pods,
            worker_image,
            "enqueue-add",
            [
                "enqueue",
                f"{namespace}/reports",
                "add",
                "--args",
                "[2, 3]",
                "--job-id",
                job_id,
                "--wait",
                "150",
                "--json",
            ],
        )
    )
    pod = cluster.wait_for(
        lambda: pod_finished(cluster, namespace, "enqueue-add"), 180, "the enqueue pod to finish"
    )
    logs = cluster.logs(namespace, "enqueue-add")
    assert pod["status"]["phase"] == "Succeeded", f"enqueue pod failed:\n{logs}"
    with cluster_redis.client() as r:
        raw = r.hgetall(f"bgq:{{{namespace}/reports}}:job:{job_id}")
    job = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
    assert job.get("state") == "succeeded", job
    assert "5" in logs, logs

    # the BackgroundQueue's status reflects the scale-up, the ready worker and the empty queue
    def status_updated() -> dict[str, Any] | None:
        obj = cluster.get_json("backgroundqueue", "reports", "-n", namespace)
        status = obj.get("status", {})
        ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
        queue = status.get("queue", {})
        done = (
            status.get("observedGeneration") == obj["metadata"]["generation"]
            and status.get("scaling", {}).get("lastScaleTime")
            and status.get("readyReplicas", 0) >= 1
            and ready == "True"
            and queue.get("backlog") == 0
            and queue.get("inFlight") == 0
        )
        return status if done else None

    cluster.wait_for(status_updated, 60, "the example's status: Ready, 1 worker, queue empty")

    # helm test: a BackgroundQueue of its own, a job enqueued from a pod, waited for
    result = cluster.helm("test", RELEASE, "-n", namespace, "--timeout", "240s", check=False,
                          timeout=300)  # fmt: skip
    if result.returncode != 0:
        pods = cluster.kubectl("get", "pods,bgq", "-n", namespace, "-o", "wide").stdout
        test_logs = cluster.logs(namespace, f"{RELEASE}-test-enqueue")
        raise AssertionError(f"helm test failed: {result.stderr}\n{pods}\n{test_logs}")
    assert "Succeeded" in result.stdout, result.stdout
    # hook-succeeded: the test's queue and pod are gone again
    cluster.wait_for(
        lambda: (
            cluster.kubectl(
                "get", "backgroundqueue", f"{RELEASE}-test", "-n", namespace, check=False
            ).returncode
            != 0
        ),
        60,
        "the helm test BackgroundQueue to be deleted",
    )
    cluster.wait_for(
        lambda: (
            not cluster.pods(namespace, "app.kubernetes.io/component=test")
            and not cluster.pods(namespace, f"bgq.dev/queue={RELEASE}-test")
        ),
        60,
        "the helm test pod and the test queue's workers to be gone",
    )


def test_chart_crd_is_accepted_by_the_api_server(cluster: Cluster) -> None:
    """The CRD as the chart renders it (crds.install=true: Helm labels, keep annotation) passes
    the API server's validation (server-side dry run: the shared CRD is not touched)."""
    rendered = cluster.helm(
        "template", RELEASE, str(CHART), "--show-only", "templates/crd.yaml",
        "--kube-version", "v1.36.0",
    ).stdout  # fmt: skip
    assert "helm.sh/resource-policy: keep" in rendered
    result = cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-",
        input=rendered, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"customresourcedefinition.apiextensions.k8s.io/{CRD_NAME}" in result.stdout


def test_examples_are_accepted_by_the_api_server(cluster: Cluster, namespace: str) -> None:
    """Every manifest in examples/ passes the API server's validation (CRD schema and CEL rules
    for the BackgroundQueues), as a user would apply it (server-side dry run)."""
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / f"{CRD_NAME}.yaml")
    )  # fmt: skip
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s")
    for path in sorted(EXAMPLES.glob("*.yaml")):
        result = cluster.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False
        )
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        kinds = [d["kind"] for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(result.stdout.strip().splitlines()) == len(kinds), result.stdout
