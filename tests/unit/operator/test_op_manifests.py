"""Table tests of the pure worker-Deployment builder."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bgq_operator.manifests import build_deployment, selector_string
from bgq_operator.spec import parse_spec

BASE: dict[str, Any] = {
    "redis": {"url": "redis://redis.infra:6379/0"},
    "worker": {"image": "example/tasks:1", "tasksModule": "myapp.tasks"},
}


def deploy(overrides: dict[str, Any] | None = None, replicas: int = 2) -> dict[str, Any]:
    spec = json.loads(json.dumps(BASE))
    for path, value in (overrides or {}).items():
        node = spec
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return build_deployment("orders", "shop", "uid-1", parse_spec(spec), replicas)


def env_of(dep: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dep["spec"]["template"]["spec"]["containers"][0]["env"])


def env_map(dep: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env_of(dep)}


def test_identity_labels_owner_and_selector() -> None:
    dep = deploy()
    meta = dep["metadata"]
    assert (meta["name"], meta["namespace"]) == ("bgq-orders", "shop")
    assert meta["labels"] == {
        "app.kubernetes.io/name": "bgq-worker",
        "app.kubernetes.io/instance": "orders",
        "app.kubernetes.io/managed-by": "bgq-operator",
        "bgq.dev/queue": "orders",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "bgq.dev/v1alpha1",
            "kind": "BackgroundQueue",
            "name": "orders",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "bgq-worker",
        "app.kubernetes.io/instance": "orders",
    }
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pod_labels == meta["labels"]
    assert selector_string("orders") == (
        "app.kubernetes.io/name=bgq-worker,app.kubernetes.io/instance=orders"
    )


def test_default_env_is_bgq_only_and_complete() -> None:
    env = env_map(deploy())
    assert all(name.startswith("BGQ_") for name in env)
    assert env["BGQ_QUEUE"] == "shop/orders"
    assert env["BGQ_NAMESPACE"] == "shop"
    assert env["BGQ_REDIS_URL"] == "redis://redis.infra:6379/0"
    assert env["BGQ_TASKS_MODULE"] == "myapp.tasks"
    assert env["BGQ_CONCURRENCY"] == "10"
    assert env["BGQ_DRAIN_SECONDS"] == "25"
    assert env["BGQ_HTTP_PORT"] == "8080"
    assert env["BGQ_POD_NAME"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    assert "BGQ_REDIS_PASSWORD" not in env
    assert "BGQ_REDIS_TLS_CA_FILE" not in env
    assert all(isinstance(v, (str, dict)) for v in env.values()), "env values must be strings"


@pytest.mark.parametrize(
    ("overrides", "name", "expected"),
    [
        ({"jobs.timeoutSeconds": 60}, "BGQ_DEFAULT_TIMEOUT_SECONDS", "60"),
        ({"jobs.maxRetries": 0}, "BGQ_DEFAULT_MAX_RETRIES", "0"),
        ({"jobs.backoff": {"baseSeconds": 2, "maxSeconds": 9}}, "BGQ_BACKOFF_MAX_SECONDS", "9"),
        ({"jobs.backoff": {"baseSeconds": 2, "maxSeconds": 9}}, "BGQ_BACKOFF_BASE_SECONDS", "2"),
        ({"jobs.leaseSeconds": 12}, "BGQ_LEASE_SECONDS", "12"),
        ({"jobs.maxDeliveries": 2}, "BGQ_MAX_DELIVERIES", "2"),
        ({"jobs.resultTtlSeconds": 5}, "BGQ_RESULT_TTL_SECONDS", "5"),
        ({"jobs.deadLetterRetentionSeconds": 7}, "BGQ_DEAD_RETENTION_SECONDS", "7"),
        ({"worker.concurrency": 3}, "BGQ_CONCURRENCY", "3"),
        ({"drainSeconds": 40}, "BGQ_DRAIN_SECONDS", "40"),
        (
            {"redis": {"urlSecretRef": {"name": "r", "key": "url"}}},
            "BGQ_REDIS_URL",
            {"secretKeyRef": {"name": "r", "key": "url"}},
        ),
        (
            {"redis.passwordSecretRef": {"name": "r", "key": "pw"}},
            "BGQ_REDIS_PASSWORD",
            {"secretKeyRef": {"name": "r", "key": "pw"}},
        ),
        ({"redis.tls": {"enabled": True}}, "BGQ_REDIS_URL", "rediss://redis.infra:6379/0"),
        (
            {"redis.tls": {"caSecretRef": {"name": "ca", "key": "tls.crt"}}},
            "BGQ_REDIS_TLS_CA_FILE",
            "/etc/bgq/redis-ca/ca.crt",
        ),
    ],
)
def test_spec_fields_map_to_env(overrides: dict[str, Any], name: str, expected: Any) -> None:
    assert env_map(deploy(overrides))[name] == expected


def test_secrets_are_referenced_never_copied() -> None:
    dep = deploy(
        {
            "redis": {
                "urlSecretRef": {"name": "redis-cred", "key": "url"},
                "passwordSecretRef": {"name": "redis-cred", "key": "password"},
            }
        }
    )
    text = json.dumps(dep)
    assert "redis://" not in text
    refs = [e["valueFrom"]["secretKeyRef"] for e in env_of(dep) if "secretKeyRef" in str(e)]
    assert refs == [
        {"name": "redis-cred", "key": "url"},
        {"name": "redis-cred", "key": "password"},
    ]


def test_user_env_is_appended_after_bgq_env_and_env_from_kept() -> None:
    dep = deploy(
        {
            "worker.env": [
                {"name": "APP_MODE", "value": "fast"},
                {"name": "BGQ_LOG_LEVEL", "value": "DEBUG"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}},
            ],
            "worker.envFrom": [{"configMapRef": {"name": "app-config"}}],
        }
    )
    names = [e["name"] for e in env_of(dep)]
    assert names[-3:] == ["APP_MODE", "BGQ_LOG_LEVEL", "TOKEN"]
    assert names.index("BGQ_POD_NAME") < names.index("APP_MODE")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": "app-config"}}]


def test_container_defaults_probes_and_security() -> None:
    dep = deploy()
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # tini is PID 1 and forwards SIGTERM to bgq alone (no -g: cpu_bound children keep running);
    # -e 143 maps "SIGTERM before bgq's handler existed" (nothing fetched yet) to a clean exit
    assert container["command"] == ["tini", "-e", "143", "--", "bgq", "worker"]
    assert "-g" not in container["command"]
    assert "args" not in container
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["enableServiceLinks"] is False  # Service env vars must not shadow BGQ_* settings
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert pod["automountServiceAccountToken"] is False
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_grace_period_follows_drain_budget() -> None:
    dep = deploy({"drainSeconds": 100})
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 105
    assert env_map(dep)["BGQ_DRAIN_SECONDS"] == "100"


def test_user_pod_fields_are_passed_through() -> None:
    affinity: dict[str, Any] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}
    }
    dep = deploy(
        {
            "worker.command": ["python", "-m", "bgq"],
            "worker.args": ["worker", "--verbose"],
            "worker.imagePullPolicy": "Never",
            "worker.imagePullSecrets": [{"name": "regcred"}],
            "worker.resources": {
                "requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"cpu": 1},
            },
            "worker.serviceAccountName": "tasks",
            "worker.nodeSelector": {"pool": "jobs"},
            "worker.tolerations": [{"key": "jobs", "operator": "Exists", "effect": "NoSchedule"}],
            "worker.affinity": affinity,
            "worker.priorityClassName": "batch",
            "worker.podLabels": {"team": "shop", "app.kubernetes.io/name": "hijack"},
            "worker.podAnnotations": {"prometheus.io/scrape": "true"},
        }
    )
    tmpl = dep["spec"]["template"]
    pod = tmpl["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "bgq"]
    assert container["args"] == ["worker", "--verbose"]
    assert container["imagePullPolicy"] == "Never"
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": 1},
    }
    assert pod["serviceAccountName"] == "tasks"
    assert "automountServiceAccountToken" not in pod
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "jobs"}
    assert pod["tolerations"] == [{"key": "jobs", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "batch"
    assert tmpl["metadata"]["labels"]["team"] == "shop"
    assert tmpl["metadata"]["labels"]["app.kubernetes.io/name"] == "bgq-worker"
    assert tmpl["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}


def test_tls_ca_is_mounted_from_the_secret() -> None:
    dep = deploy({"redis.tls": {"enabled": True, "caSecretRef": {"name": "ca", "key": "tls.crt"}}})
    pod = dep["spec"]["template"]["spec"]
    assert {
        "name": "redis-ca",
        "secret": {
            "secretName": "ca",
            "items": [{"key": "tls.crt", "path": "ca.crt"}],
            "defaultMode": 0o444,
        },
    } in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "redis-ca", "mountPath": "/etc/bgq/redis-ca", "readOnly": True} in mounts


def test_builder_is_deterministic() -> None:
    assert deploy() == deploy()
