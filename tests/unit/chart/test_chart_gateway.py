"""Render tests of the chart's optional HTTP enqueue gateway (``gateway.enabled``): what it
renders, that its pod is restricted and holds no credentials of its own, that it needs no RBAC,
and that the schema and the templates refuse bad gateway values with a message naming them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_chart as chart
from chart_helpers import CHART, KUBE_VERSION, Render, run_helm, values_args

REDIS_URL = "redis://redis.infra:6379/0"
GATEWAY: dict[str, Any] = {
    "gateway": {
        "enabled": True,
        "replicas": 2,
        "redis": {"existingSecret": "queues-redis", "existingSecretKey": "redis-url"},
        "auth": {"existingSecret": "gateway-token", "existingSecretKey": "bearer"},
    },
    "worker": {"image": {"repository": "registry.example/bgq-worker", "tag": "1.2.3"}},
    "imagePullSecrets": [{"name": "regcred"}],
}
GATEWAY_URL_ONLY: dict[str, Any] = {"gateway": {"enabled": True, "redis": {"url": REDIS_URL}}}


def gateway_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"
        or "gateway" in d["metadata"]["name"]
    ]


def gateway_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = chart.one(docs, "Deployment", "bgq-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def template_error(helm: Path, tmp_path: Path, values: dict[str, Any], *args: str) -> str:
    """helm's stderr for values that must not render (fails the test if they do)."""
    result = run_helm(
        helm, "template", "bgq", str(CHART), "--kube-version", KUBE_VERSION,
        *values_args(values, tmp_path), *args,
    )  # fmt: skip
    assert result.returncode != 0, f"{values} {args} rendered"
    return result.stderr


def test_gateway_is_off_by_default_and_renders_nothing(render: Render) -> None:
    assert gateway_objects(render()) == []
    assert (
        gateway_objects(render({"gateway": {"enabled": False, "redis": {"url": REDIS_URL}}})) == []
    )
    assert gateway_objects(render({"gateway": {"redis": {"url": REDIS_URL}}})) == []


def test_gateway_renders_a_deployment_a_service_and_a_serviceaccount(render: Render) -> None:
    docs = render(GATEWAY)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in gateway_objects(docs)) == [
        ("Deployment", "bgq-gateway"),
        ("Service", "bgq-gateway"),
        ("ServiceAccount", "bgq-gateway"),
    ]
    deployment = chart.one(docs, "Deployment", "bgq-gateway")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "bgq-gateway"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # no BGQ_GATEWAY_PORT=tcp://... from the Service
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    container = gateway_container(docs)
    assert container["image"] == "registry.example/bgq-worker:1.2.3"
    # tini as PID 1 (the command replaces the image's ENTRYPOINT, so it names tini itself)
    assert container["command"] == [
        "tini", "--", "bgq", "gateway", "--host", "0.0.0.0", "--port", "8000"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]

    account = chart.one(docs, "ServiceAccount", "bgq-gateway")
    assert account["automountServiceAccountToken"] is False
    service = chart.one(docs, "Service", "bgq-gateway")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    gateway_pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    operator_pod_labels = chart.one(docs, "Deployment", "bgq")["spec"]["template"]["metadata"][
        "labels"
    ]
    selector = service["spec"]["selector"]
    assert selector.items() <= gateway_pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= gateway_pod_labels.items()
    # neither Service nor Deployment selects the other component's pods
    assert not selector.items() <= operator_pod_labels.items()
    metrics_selector = chart.one(docs, "Service", "bgq-metrics")["spec"]["selector"]
    assert not metrics_selector.items() <= gateway_pod_labels.items()
    for doc in gateway_objects(docs):
        assert doc["metadata"]["namespace"] == "bgq-system"
        for key in ("app.kubernetes.io/instance", "helm.sh/chart", "app.kubernetes.io/version"):
            assert key in doc["metadata"]["labels"], (doc["kind"], key)


def test_gateway_pod_is_restricted(render: Render) -> None:
    docs = render(GATEWAY)
    (spec,) = [s for where, s in chart.pod_specs(docs) if where == "Deployment/bgq-gateway"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # the only writable path is an emptyDir on /tmp
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    (volume,) = spec["volumes"]
    assert volume["name"] == "tmp" and "emptyDir" in volume


def test_gateway_takes_secrets_by_reference_only(render: Render) -> None:
    docs = render(GATEWAY)
    env = env_of(gateway_container(docs))
    assert env["BGQ_REDIS_URL"] == {"secretKeyRef": {"name": "queues-redis", "key": "redis-url"}}
    assert env["BGQ_GATEWAY_TOKEN"] == {"secretKeyRef": {"name": "gateway-token", "key": "bearer"}}
    assert env["BGQ_LOG_LEVEL"] == "INFO"
    assert not chart.by_kind(docs, "Secret"), "the chart must never create or copy a Secret"


def test_gateway_without_auth_has_no_token(render: Render) -> None:
    env = env_of(gateway_container(render(GATEWAY_URL_ONLY)))
    assert env["BGQ_REDIS_URL"] == REDIS_URL
    assert "BGQ_GATEWAY_TOKEN" not in env and "BGQ_GATEWAY_TOKEN_FILE" not in env


def test_gateway_uses_the_charts_redis_when_enabled(render: Render) -> None:
    docs = render({"gateway": {"enabled": True}, "redis": {"enabled": True}}, namespace="queues")
    assert env_of(gateway_container(docs))["BGQ_REDIS_URL"] == (
        "redis://bgq-redis.queues.svc:6379/0"
    )


def test_gateway_extra_env_is_appended(render: Render) -> None:
    extra = [{"name": "BGQ_GATEWAY_MAX_BODY_BYTES", "value": "65536"}]
    values = {"gateway": {**GATEWAY_URL_ONLY["gateway"], "extraEnv": extra}}
    env = gateway_container(render(values))["env"]
    assert env[-1] == extra[0]
    assert [e["name"] for e in env].count("BGQ_REDIS_URL") == 1


def test_gateway_needs_no_rbac(render: Render) -> None:
    docs = render({**GATEWAY, "rbac": {"scope": "namespaced"}})
    subjects = [
        s
        for binding in chart.by_kind(docs, "RoleBinding")
        + chart.by_kind(docs, "ClusterRoleBinding")
        for s in binding["subjects"]
    ]
    assert subjects and all(s["name"] == "bgq" for s in subjects), subjects
    # and the same RBAC as without the gateway
    without = render({"rbac": {"scope": "namespaced"}})
    assert chart.grants(chart.by_kind(docs, "Role")) == chart.grants(chart.by_kind(without, "Role"))


def test_gateway_without_a_redis_fails_saying_what_to_set(helm: Path, tmp_path: Path) -> None:
    stderr = template_error(helm, tmp_path, {"gateway": {"enabled": True}})
    assert "gateway.enabled=true needs a Redis" in stderr
    for value in ("gateway.redis.existingSecret", "gateway.redis.url", "redis.enabled=true"):
        assert value in stderr, stderr


def test_gateway_redis_url_and_secret_are_exclusive(helm: Path, tmp_path: Path) -> None:
    values = {"gateway": {"enabled": True, "redis": {"url": REDIS_URL, "existingSecret": "r"}}}
    stderr = template_error(helm, tmp_path, values)
    assert "either gateway.redis.url or gateway.redis.existingSecret, not both" in stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "gateway.enabeld=true"], "at '/gateway': additional properties 'enabeld'"),
        (
            ["--set", "gateway.auth.existingSecretName=tok"],
            "at '/gateway/auth': additional properties 'existingSecretName' not allowed",
        ),
        (["--set", "gateway.redis.url=localhost:6379"], "at '/gateway/redis/url'"),
        (["--set", "gateway.service.port=0"], "at '/gateway/service/port': minimum"),
        (["--set", "gateway.replicas=-1"], "at '/gateway/replicas': minimum"),
        (["--set", "gateway.auth.existingSecret=Bad_Name"], "at '/gateway/auth/existingSecret'"),
        (["--set", "gateway.logLevel=TRACE"], "at '/gateway/logLevel': value must be one of"),
    ],
)
def test_schema_rejects_bad_gateway_values_naming_them(
    helm: Path, tmp_path: Path, args: list[str], expected: str
) -> None:
    stderr = template_error(helm, tmp_path, {}, *args)
    assert "values don't meet the specifications of the schema" in stderr
    assert expected in stderr, stderr


def test_helm_lint_strict_with_the_gateway(helm: Path, tmp_path: Path) -> None:
    for values in (GATEWAY, {**GATEWAY_URL_ONLY, "redis": {"enabled": True}}):
        result = run_helm(helm, "lint", "--strict", str(CHART), *values_args(values, tmp_path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_notes_give_the_gateway_url_and_a_curl_example(render: Render, tmp_path: Path) -> None:
    assert "gateway" not in chart.render_notes(render, {}, tmp_path / "off").lower()

    notes = chart.render_notes(render, GATEWAY, tmp_path / "auth")
    assert "http://bgq-gateway.bgq-system.svc:8000" in notes
    assert "curl -sS -X POST http://bgq-gateway.bgq-system.svc:8000/v1/queues/bgq-system/" in notes
    assert "Authorization: Bearer $TOKEN" in notes
    assert "get secret gateway-token -o jsonpath='{.data.bearer}'" in notes
    assert "WARNING" not in notes

    notes = chart.render_notes(render, GATEWAY_URL_ONLY, tmp_path / "open")
    assert "curl -sS -X POST" in notes and "Authorization" not in notes
    assert "WARNING: gateway.auth.existingSecret is unset" in notes
