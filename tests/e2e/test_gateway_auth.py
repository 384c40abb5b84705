"""ServiceAccount-token auth of the chart's gateway on the real cluster: RBAC decides who may
enqueue into which namespace's queue.

The release (operator + gateway with ``gateway.auth.serviceAccount.enabled``) lives in the test's
namespace. A client pod in namespace A, with its ServiceAccount's projected token for audience
``bgq``, enqueues into a queue of namespace B: the gateway asks the API server (TokenReview, then
SubjectAccessReview on ``backgroundqueues/jobs``) and answers 403. The test then binds the chart's
aggregated ClusterRole ``<prefix>-enqueuer`` to that ServiceAccount with a RoleBinding in B, and
the pod's retries get 201 (within the gateway's 10 s decision cache). A token for another audience
and no token are 401; a bound caller still may not enqueue into A (no binding there). The job is
checked in Redis from the host.
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

RELEASE = "bgq-sa"
GATEWAY = f"{RELEASE}-gateway"
QUEUE = "orders"

# Runs in the client pod (namespace A): JSON lines, then RESULT.
CLIENT = r"""
import json, sys, time, urllib.error, urllib.request

base, target, own = sys.argv[1:4]
token = open("/var/run/secrets/bgq/token").read().strip()
other = open("/var/run/secrets/other/token").read().strip()


def call(path, token=None):
    body = json.dumps({"task": "t", "args": ["from-a"], "job_id": "sa-e2e-1"}).encode()
    req = urllib.request.Request(base + path, data=body, method="POST")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def until_ready(deadline):
    while True:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as resp:
                return resp.status
        except OSError as exc:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


out = {"readyz": until_ready(time.monotonic() + 60)}
jobs = "/v1/queues/" + target + "/jobs"
out["no_token"] = call(jobs)
out["other_audience"] = call(jobs, other)
out["denied"] = call(jobs, token)
print("DENIED " + json.dumps(out["denied"]), flush=True)
deadline = time.monotonic() + 90
while True:
    status, body = call(jobs, token)
    if status != 403 or time.monotonic() > deadline:
        break
    time.sleep(1)
out["allowed"] = [status, body]
out["own_namespace"] = call("/v1/queues/" + own + "/jobs", token)
print("RESULT " + json.dumps(out), flush=True)
"""


def projected(name: str, audience: str) -> dict[str, Any]:
    return {
        "name": name,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "audience": audience,
                                         "expirationSeconds": 3600}}
            ]
        },
    }


def client_pod(namespace: str, worker_image: str, base_url: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sa-client", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "caller",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [projected("bgq-token", "bgq"), projected("other-token", "other")],
            "containers": [
                {
                    "name": "client",
                    "image": worker_image,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", CLIENT, base_url, target, f"{namespace}/{QUEUE}"],
                    "securityContext": RESTRICTED_CONTAINER,
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                    "volumeMounts": [
                        {"name": "bgq-token", "mountPath": "/var/run/secrets/bgq"},
                        {"name": "other-token", "mountPath": "/var/run/secrets/other"},
                    ],
                }
            ],
        },
    }


def test_serviceaccount_enqueue_is_allowed_only_by_a_rolebinding(
    cluster: Cluster,
    cluster_redis: HostRedis,
    operator_image: str,
    worker_image: str,
    namespace: str,
) -> None:
    ns_a, ns_b = f"{namespace}-a", f"{namespace}-b"
    prefix = f"{namespace}-q"  # cluster-wide ClusterRole names: unique per test run
    prepare_namespace(cluster, namespace)
    for ns in (ns_a, ns_b):
        cluster.kubectl("create", "namespace", ns)
        cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    cluster.kubectl("create", "serviceaccount", "caller", "-n", ns_a)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "queues-redis", "namespace": namespace},
            "stringData": {"url": cluster_redis.url_for_pods},
        }
    )
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
        "--set", "gateway.auth.serviceAccount.enabled=true",
        "--set", f"gateway.auth.serviceAccount.roleNamePrefix={prefix}",
        check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    try:
        wait_operator_ready(cluster, namespace)
        cluster.wait_pods_running(namespace, "app.kubernetes.io/component=gateway", 1, timeout=90)
        for role in ("enqueuer", "viewer", "admin"):
            cluster.kubectl("get", "clusterrole", f"{prefix}-{role}")
        base_url = f"http://{GATEWAY}.{namespace}.svc:8000"
        cluster.apply(client_pod(ns_a, worker_image, base_url, f"{ns_b}/{QUEUE}"))

        def denied_once() -> bool:
            return _running(cluster, ns_a) and "DENIED " in cluster.logs(ns_a, "sa-client")

        cluster.wait_for(denied_once, 150, "the client's first (denied) enqueue")
        cluster.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "a-may-enqueue", "namespace": ns_b},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": f"{prefix}-enqueuer"},
                "subjects": [{"kind": "ServiceAccount", "name": "caller", "namespace": ns_a}],
            }
        )
        pod = cluster.wait_for(lambda: pod_finished(cluster, ns_a, "sa-client"), 150, "client")
        logs = cluster.logs(ns_a, "sa-client")
        assert pod["status"]["phase"] == "Succeeded", logs
        (line,) = [x for x in logs.splitlines() if x.startswith("RESULT ")]
        out = json.loads(line.removeprefix("RESULT "))
        assert out["readyz"] == 200, out
        assert out["no_token"][0] == 401, out
        assert out["other_audience"][0] == 401, out
        status, body = out["denied"]
        assert status == 403 and body["error"] == "forbidden", out
        assert f"system:serviceaccount:{ns_a}:caller" in body["message"], body
        assert out["allowed"] == [
            201, {"id": "sa-e2e-1", "queue": f"{ns_b}/{QUEUE}", "status": "enqueued",
                  "created": True},
        ], out
        assert out["own_namespace"][0] == 403, out  # bound in B only
        with cluster_redis.client() as r:
            state = r.hget(f"bgq:{{{ns_b}/{QUEUE}}}:job:sa-e2e-1", "state")
        assert state == b"queued", state
    except BaseException:
        for pod in cluster.pods(namespace, "app.kubernetes.io/component=gateway"):
            print(cluster.logs(namespace, pod["metadata"]["name"])[-4000:])
        raise
    finally:
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--timeout", "60s", check=False)
        for ns in (ns_a, ns_b):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _running(cluster: Cluster, namespace: str) -> bool:
    pod = cluster.get_json("pod", "sa-client", "-n", namespace)
    return pod["status"].get("phase") in {"Running", "Succeeded", "Failed"}
