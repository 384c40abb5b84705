"""The chart's HTTP enqueue gateway on the real cluster, used the way a service in the cluster
uses it.

One release (operator + gateway, namespaced RBAC, watching only the test's namespace) in a
namespace that enforces the ``restricted`` Pod Security Standard. The gateway takes its Redis
URL and its bearer token from Secrets created beforehand (by reference). A BackgroundQueue
(workers from ``worker_image`` running ``e2e_tasks``) is applied; then a client pod, with the
worker image's Python, talks to the gateway Service by its cluster DNS name (the name NOTES.txt
prints): unauthenticated and wrong-token requests get 401, an authenticated enqueue gets 201,
its repeat 200 (idempotent job id), and polling GET through the gateway sees the job done, with
the result the worker produced. Redis is checked from the host too.
"""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.kube import Cluster, HostRedis
from tests.e2e.test_helm import (
    CHART,
    RESTRICTED_CONTAINER,
    pod_finished,
    prepare_namespace,
    split_image,
    wait_operator_ready,
)

RELEASE = "bgq-gw"
GATEWAY = f"{RELEASE}-gateway"
QUEUE = "mail"
TOKEN = "e2e-gateway-token-3f9c1a"
JOB_ID = "gw-e2e-1"

# Runs in the client pod: every request the test needs, one JSON line per step, then a summary.
CLIENT = r"""
import json, sys, time, urllib.error, urllib.request

base, queue, token, job_id = sys.argv[1:5]


def decode(raw):
    try:
        return json.loads(raw)
    except ValueError:  # /livez and /readyz answer plain text
        return raw.decode(errors="replace")


def call(method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, decode(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, decode(err.read())


def until_ready(deadline):
    while True:
        try:
            return call("GET", "/readyz")
        except OSError as exc:  # DNS or endpoints not there yet
            if time.monotonic() > deadline:
                raise
            print(json.dumps({"waiting": str(exc)}), flush=True)
            time.sleep(0.5)


out = {"readyz": until_ready(time.monotonic() + 60)[0]}
job = {"task": "record", "args": ["via-gateway"], "job_id": job_id}
jobs = "/v1/queues/" + queue + "/jobs"
out["no_token"] = call("POST", jobs, job)
out["wrong_token"] = call("POST", jobs, job, token="not-" + token)
out["no_token_get"] = call("GET", "/v1/queues/" + queue)[0]
out["enqueue"] = call("POST", jobs, job, token=token)
out["repeat"] = call("POST", jobs, job, token=token)
deadline = time.monotonic() + 150
while True:
    status, doc = call("GET", jobs + "/" + job_id, token=token)
    if status == 200 and doc["state"] in ("succeeded", "dead", "cancelled"):
        break
    if time.monotonic() > deadline:
        break
    time.sleep(0.5)
out["job"] = [status, doc]
print("RESULT " + json.dumps(out), flush=True)
"""


def client_pod(namespace: str, worker_image: str, base_url: str) -> dict[str, Any]:
    """A restricted pod running :data:`CLIENT` with the worker image's Python (busybox's wget
    crashes on this node)."""
    argv = [base_url, f"{namespace}/{QUEUE}", TOKEN, JOB_ID]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gateway-client", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "client",
                    "image": worker_image,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", CLIENT, *argv],
                    "securityContext": RESTRICTED_CONTAINER,
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                }
            ],
        },
    }


def queue_manifest(namespace: str, worker_image: str) -> dict[str, Any]:
    """A BackgroundQueue whose workers run the image's ``e2e_tasks`` (URL from the Secret)."""
    return {
        "apiVersion": "bgq.dev/v1alpha1",
        "kind": "BackgroundQueue",
        "metadata": {"name": QUEUE, "namespace": namespace},
        "spec": {
            "redis": {"urlSecretRef": {"name": "queues-redis", "key": "url"}},
            "worker": {
                "image": worker_image,
                "imagePullPolicy": "Never",
                "tasksModule": "e2e_tasks",
                "concurrency": 2,
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
            },
            "scaling": {"minReplicas": 0, "maxReplicas": 1, "idleSecondsBeforeZero": 10},
            "drainSeconds": 5,
        },
    }


def secret(namespace: str, name: str, key: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {key: value},
    }


def install(cluster: Cluster, namespace: str, operator_image: str, worker_image: str) -> str:
    """``helm install`` operator + gateway; returns the NOTES."""
    op_repo, op_tag = split_image(operator_image)
    wk_repo, wk_tag = split_image(worker_image)
    result = cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", namespace,
        "--set", f"image.repository={op_repo}", "--set", f"image.tag={op_tag}",
        "--set", "image.pullPolicy=Never",
        "--set", f"worker.image.repository={wk_repo}", "--set", f"worker.image.tag={wk_tag}",
        "--set", "worker.image.pullPolicy=Never",
        "--set", "rbac.scope=namespaced",
        "--set", "crds.install=false",
        "--set", "tests.enabled=false",
        "--set", "gateway.enabled=true",
        "--set", "gateway.redis.existingSecret=queues-redis",
        "--set", "gateway.auth.existingSecret=gateway-token",
        check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_gateway_enqueues_through_the_chart_service(
    cluster: Cluster,
    cluster_redis: HostRedis,
    operator_image: str,
    worker_image: str,
    namespace: str,
) -> None:
    prepare_namespace(cluster, namespace)
    cluster.apply(
        [
            secret(namespace, "queues-redis", "url", cluster_redis.url_for_pods),
            secret(namespace, "gateway-token", "token", TOKEN),
        ]
    )
    notes = install(cluster, namespace, operator_image, worker_image)
    base_url = f"http://{GATEWAY}.{namespace}.svc:8000"
    assert base_url in notes and "Authorization: Bearer $TOKEN" in notes, notes
    try:
        wait_operator_ready(cluster, namespace)
        (gateway,) = cluster.wait_pods_running(
            namespace, "app.kubernetes.io/component=gateway", 1, timeout=90
        )
        # its own ServiceAccount, no API token mounted, restricted, secrets by reference
        spec = gateway["spec"]
        assert spec["serviceAccountName"] == GATEWAY
        mounts = [m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])]
        assert mounts == ["/tmp"], mounts
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert "value" not in env["BGQ_REDIS_URL"] and "value" not in env["BGQ_GATEWAY_TOKEN"]

        cluster.apply(queue_manifest(namespace, worker_image))
        cluster.apply(client_pod(namespace, worker_image, base_url))
        pod = cluster.wait_for(
            lambda: pod_finished(cluster, namespace, "gateway-client"), 210, "the gateway client"
        )
        logs = cluster.logs(namespace, "gateway-client")
        assert pod["status"]["phase"] == "Succeeded", logs
        (line,) = [x for x in logs.splitlines() if x.startswith("RESULT ")]
        out = json.loads(line.removeprefix("RESULT "))
        check_answers(out, namespace)
        with cluster_redis.client() as r:
            state = r.hget(f"bgq:{{{namespace}/{QUEUE}}}:job:{JOB_ID}", "state")
        assert state == b"succeeded", state
    except BaseException:
        for pod in cluster.pods(namespace, "app.kubernetes.io/component=gateway"):
            print(cluster.logs(namespace, pod["metadata"]["name"])[-4000:])
        raise
    finally:
        # the queue first, while the operator still runs (its finalizer), then the release
        cluster.kubectl("delete", "bgq", "--all", "-n", namespace, "--timeout=60s", check=False)
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--timeout", "60s", check=False)


def check_answers(out: dict[str, Any], namespace: str) -> None:
    """The client pod's answers, step by step."""
    queue = f"{namespace}/{QUEUE}"
    assert out["readyz"] == 200, out
    for step in ("no_token", "wrong_token"):
        status, body = out[step]
        assert status == 401, (step, out[step])
        assert isinstance(body, dict) and body.get("error"), (step, body)
    assert out["no_token_get"] == 401, out
    assert out["enqueue"] == [
        201,
        {"id": JOB_ID, "queue": queue, "status": "enqueued", "created": True},
    ], out["enqueue"]
    assert out["repeat"] == [
        200,
        {"id": JOB_ID, "queue": queue, "status": "exists", "created": False},
    ], out["repeat"]
    status, job = out["job"]
    assert status == 200, out["job"]
    assert job["state"] == "succeeded", job
    assert job["task"] == "record" and job["attempt"] == 1, job
    assert job["result"]["value"] == "via-gateway", job
    assert job["result"]["pod"].startswith(f"bgq-{QUEUE}-"), job  # a worker pod of the queue
