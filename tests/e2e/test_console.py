"""The web console via the chart on the real cluster: the operator's decision log reaches the
console's overview, and Kubernetes RBAC (real TokenReview and SubjectAccessReview) decides what a
ServiceAccount may do there.

The release (operator + console from the console image, ``console.auth.serviceAccount.enabled``)
and a BackgroundQueue live in the test's namespace. A client pod runs as ServiceAccount
``looker`` (bound to the chart's ``<prefix>-viewer``) with its projected token for audience
``bgq``: the overview lists the queue with the Ready condition and replicas / desired the
operator recorded; the dead-letter page offers no replay; pausing is 403; no token sees no
queue, a token for another audience is 401. Then the test binds ``<prefix>-admin`` and the pod's
retries of the pause get through (303, within the 10 s decision cache); the pause is checked in
Redis from the host.
"""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.kube import Cluster, HostRedis, build_image
from tests.e2e.test_gateway_auth import projected
from tests.e2e.test_helm import (
    CHART,
    RESTRICTED_CONTAINER,
    example_queue,
    pod_finished,
    prepare_namespace,
    split_image,
    wait_operator_ready,
)

RELEASE = "bgq-con"
CONSOLE = f"{RELEASE}-console"
QUEUE = "reports"  # examples/backgroundqueue-full.yaml

# Runs in the client pod: JSON lines, then RESULT.
CLIENT = r"""
import json, sys, time, urllib.error, urllib.parse, urllib.request

base, queue = sys.argv[1:3]
token = open("/var/run/secrets/bgq/token").read().strip()
other = open("/var/run/secrets/other/token").read().strip()


def call(path, token=None, form=None):
    for _ in range(10):  # a 503 (API server or Redis briefly unavailable) is retried
        answer = call_once(path, token, form)
        if answer[0] != 503:
            return answer
        time.sleep(1)
    return answer


def call_once(path, token=None, form=None):
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.read().decode(), lower(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), lower(err.headers)


def lower(headers):
    return {k.lower(): v for k, v in headers.items()}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


deadline = time.monotonic() + 90
while True:
    try:
        if call("/readyz")[0] == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        raise SystemExit("the console never became ready")
    time.sleep(0.5)
out = {}
deadline = time.monotonic() + 90
while True:  # until the operator's decision log lists the queue as Ready (its first record
    # may predate the Deployment's readiness; a changed condition is recorded at once)
    status, body, _ = call("/api/overview", token)
    rows = json.loads(body)["queues"] if status == 200 else []
    if any(r["queue"] == queue and r["ready"] == "True" for r in rows):
        break
    if time.monotonic() > deadline:
        break
    time.sleep(1)
out["overview"] = [status, rows]
out["anonymous"] = json.loads(call("/api/overview")[1])
out["other_audience"] = call("/api/overview", other)[0]
status, body, headers = call("/q/" + queue + "/dead", token)
out["dead_page"] = [status, "action=replay" in body, "action=purge" in body,
                    headers.get("content-security-policy", "")]
out["pause_denied"] = call("/q/" + queue + "/action", token, {"action": "pause"})[:2]
print("DENIED " + json.dumps(out["pause_denied"]), flush=True)
deadline = time.monotonic() + 90
while True:
    status, body, headers = call("/q/" + queue + "/action", token, {"action": "pause"})
    if status != 403 or time.monotonic() > deadline:
        break
    time.sleep(1)
out["pause_allowed"] = [status, headers.get("location", "")]
print("RESULT " + json.dumps(out), flush=True)
"""


def client_pod(namespace: str, image: str, base_url: str, queue: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "console-client", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "looker",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [projected("bgq-token", "bgq"), projected("other-token", "other")],
            "containers": [{
                "name": "client", "image": image, "imagePullPolicy": "Never",
                "command": ["python3", "-c", CLIENT, base_url, queue],
                "securityContext": RESTRICTED_CONTAINER,
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                "volumeMounts": [{"name": "bgq-token", "mountPath": "/var/run/secrets/bgq"},
                                 {"name": "other-token", "mountPath": "/var/run/secrets/other"}],
            }],
        },
    }  # fmt: skip


def binding(namespace: str, name: str, role: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "looker", "namespace": namespace}],
    }


def test_console_via_the_chart_shows_the_operators_decisions_and_obeys_rbac(
    cluster: Cluster,
    cluster_redis: HostRedis,
    operator_image: str,
    worker_image: str,
    namespace: str,
) -> None:
    console_image = build_image("console")
    prefix = f"{namespace}-q"  # cluster-wide ClusterRole names: unique per test run
    prepare_namespace(cluster, namespace)
    cluster.kubectl("create", "serviceaccount", "looker", "-n", namespace)
    cluster.apply({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "queues-redis", "namespace": namespace},
                   "stringData": {"url": cluster_redis.url_for_pods}})  # fmt: skip
    op_repo, op_tag = split_image(operator_image)
    wk_repo, wk_tag = split_image(worker_image)
    co_repo, co_tag = split_image(console_image)
    result = cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", namespace,
        "--set", f"image.repository={op_repo}", "--set", f"image.tag={op_tag}",
        "--set", "image.pullPolicy=Never",
        "--set", f"worker.image.repository={wk_repo}", "--set", f"worker.image.tag={wk_tag}",
        "--set", "worker.image.pullPolicy=Never",
        "--set", "rbac.scope=namespaced", "--set", "crds.install=false",
        "--set", "tests.enabled=false",
        "--set", "console.enabled=true",
        "--set", f"console.image.repository={co_repo}", "--set", f"console.image.tag={co_tag}",
        "--set", "console.redis.existingSecret=queues-redis",
        "--set", "console.auth.serviceAccount.enabled=true",
        "--set", f"gateway.auth.serviceAccount.roleNamePrefix={prefix}",
        check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    try:
        wait_operator_ready(cluster, namespace)
        cluster.wait_pods_running(namespace, "app.kubernetes.io/component=console", 1, timeout=90)
        for manifest in example_queue(namespace, cluster_redis.url_for_pods, worker_image):
            cluster.apply(manifest)
        cluster.apply(binding(namespace, "looker-views", f"{prefix}-viewer"))
        base_url = f"http://{CONSOLE}.{namespace}.svc:8090"
        cluster.apply(client_pod(namespace, worker_image, base_url, f"{namespace}/{QUEUE}"))

        def denied_once() -> bool:
            pod = cluster.get_json("pod", "console-client", "-n", namespace)
            started = pod["status"].get("phase") in {"Running", "Succeeded", "Failed"}
            return started and "DENIED " in cluster.logs(namespace, "console-client")

        cluster.wait_for(denied_once, 200, "the client's first (denied) pause")
        cluster.apply(binding(namespace, "looker-admins", f"{prefix}-admin"))
        pod = cluster.wait_for(lambda: pod_finished(cluster, namespace, "console-client"), 150,
                               "the client pod")  # fmt: skip
        logs = cluster.logs(namespace, "console-client")
        assert pod["status"]["phase"] == "Succeeded", logs
        (line,) = [x for x in logs.splitlines() if x.startswith("RESULT ")]
        out = json.loads(line.removeprefix("RESULT "))
        status, rows = out["overview"]
        assert status == 200, out
        (row,) = [r for r in rows if r["queue"] == f"{namespace}/{QUEUE}"]
        assert row["ready"] == "True", row  # the operator's Ready condition, via the log
        assert row["desired"] is not None and row["replicas"] is not None, row
        assert row["bound_by"], row
        assert out["anonymous"] == {"queues": []}, out
        assert out["other_audience"] == 401, out
        page_status, replay, purge, csp = out["dead_page"]
        assert (page_status, replay, purge) == (200, False, False), out
        assert "frame-ancestors 'none'" in csp, out
        status, body = out["pause_denied"]
        assert status == 403 and "may not update backgroundqueues/pause" in body, out
        assert out["pause_allowed"][0] == 303, out
        assert out["pause_allowed"][1].startswith(f"/q/{namespace}/{QUEUE}?note=paused"), out
        with cluster_redis.client() as r:
            assert r.hexists(f"bgq:{{{namespace}/{QUEUE}}}:paused", "cli")
            assert r.xlen(f"bgq:{{{namespace}/{QUEUE}}}:decisions") >= 1
    except BaseException:
        print(cluster.kubectl("logs", "-n", namespace, "console-client", check=False).stdout)
        for selector in ("app.kubernetes.io/component=console",
                         "app.kubernetes.io/component=operator"):  # fmt: skip
            for p in cluster.pods(namespace, selector):
                print(cluster.logs(namespace, p["metadata"]["name"])[-4000:])
        raise
    finally:
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--timeout", "60s", check=False)
