"""Render tests of the chart's web console (``console.enabled``): what it renders, that its pod is
restricted and gets credentials only by reference, the review RBAC and the aggregated queue roles
with serviceAccount auth, the NetworkPolicy, and refusals of bad console values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_chart as chart
from chart_helpers import Render
from test_chart_gateway import env_of, template_error
from test_chart_gateway_auth import rules_of

CONSOLE: dict[str, Any] = {
    "console": {
        "enabled": True,
        "redis": {"existingSecret": "queues-redis", "existingSecretKey": "redis-url"},
        "queues": ["shop/orders", "shop/emails"],
        "auth": {"existingSecret": "console-token", "sessionSecret": {"existingSecret": "cs"}},
    },
    "worker": {"image": {"repository": "registry.example/bgq-worker", "tag": "1.2.3"}},
}
SA_CONSOLE: dict[str, Any] = {
    "console": {**CONSOLE["console"], "auth": {"serviceAccount": {"enabled": True},
                                              "proxy": {"userHeader": "X-Forwarded-User",
                                                        "groupsHeader": "X-Forwarded-Groups"}}},
}  # fmt: skip


def console_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "console"
            or "console" in d["metadata"]["name"]]  # fmt: skip


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = chart.one(docs, "Deployment", "bgq-console")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_console_is_off_by_default_and_renders_nothing(render: Render) -> None:
    docs = render()
    assert console_objects(docs) == []
    assert "bgq-viewer" not in {d["metadata"]["name"] for d in chart.by_kind(docs, "ClusterRole")}


def test_console_deployment_service_and_credentials_by_reference(render: Render) -> None:
    docs = render(CONSOLE)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in console_objects(docs))
    assert kinds == [("Deployment", "bgq-console"), ("Service", "bgq-console"),
                     ("ServiceAccount", "bgq-console")]  # fmt: skip
    c = container(docs)
    assert c["image"] == "registry.example/bgq-worker:1.2.3"
    assert c["command"] == ["tini", "--", "bgq", "console", "--host", "0.0.0.0", "--port", "8090"]
    env = env_of(c)
    assert env["BGQ_REDIS_URL"] == {"secretKeyRef": {"name": "queues-redis", "key": "redis-url"}}
    assert env["BGQ_CONSOLE_TOKEN"] == {"secretKeyRef": {"name": "console-token", "key": "token"}}
    assert env["BGQ_CONSOLE_SECRET"] == {"secretKeyRef": {"name": "cs", "key": "secret"}}
    assert env["BGQ_CONSOLE_QUEUES"] == "shop/orders,shop/emails"
    assert "BGQ_CONSOLE_AUTH_SERVICEACCOUNT" not in env
    pod = chart.one(docs, "Deployment", "bgq-console")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = chart.one(docs, "Service", "bgq-console")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8090, "targetPort": "http",
                                         "protocol": "TCP"}]  # fmt: skip
    # no RBAC at all without serviceAccount auth
    assert not [d for d in console_objects(docs) if d["kind"].startswith("ClusterRole")]


def test_console_image_defaults_to_the_worker_image(render: Render) -> None:
    own = {"console": {**CONSOLE["console"],
                       "image": {"repository": "registry.example/bgq-console", "tag": "9"}}}
    assert container(render({**CONSOLE, **own}))["image"] == "registry.example/bgq-console:9"


def test_serviceaccount_auth_gets_the_reviews_only_and_the_queue_roles(render: Render) -> None:
    docs = render(SA_CONSOLE)
    role = chart.one(docs, "ClusterRole", "bgq-console-reviews")
    assert rules_of(role) == {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }
    binding = chart.one(docs, "ClusterRoleBinding", "bgq-console-reviews")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "bgq-console", "namespace": "bgq-system"}
    ]
    pod = chart.one(docs, "Deployment", "bgq-console")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    env = env_of(container(docs))
    assert env["BGQ_CONSOLE_AUTH_SERVICEACCOUNT"] == "true"
    assert env["BGQ_GATEWAY_KUBE_AUDIENCE"] == "bgq"
    assert env["BGQ_CONSOLE_PROXY_USER_HEADER"] == "X-Forwarded-User"
    assert env["BGQ_CONSOLE_PROXY_GROUPS_HEADER"] == "X-Forwarded-Groups"
    # the aggregated roles are rendered for the console alone (no gateway) and grant every
    # permission the console asks for
    from bgq.console.auth import MUTATIONS, VIEW, VIEW_DEAD

    admin = rules_of(chart.one(docs, "ClusterRole", "bgq-admin"))
    viewer = rules_of(chart.one(docs, "ClusterRole", "bgq-viewer"))
    for verb, sub in [VIEW, VIEW_DEAD, *MUTATIONS.values()]:
        assert ("bgq.dev", f"backgroundqueues/{sub}", verb) in admin
    for verb, sub in (VIEW, VIEW_DEAD):
        assert ("bgq.dev", f"backgroundqueues/{sub}", verb) in viewer
    for verb, sub in MUTATIONS.values():
        assert ("bgq.dev", f"backgroundqueues/{sub}", verb) not in viewer
    assert not any(d["metadata"]["name"].startswith("bgq-gateway") for d in docs)


def test_networkpolicy_for_the_console(render: Render) -> None:
    values = {**SA_CONSOLE, "networkPolicy": {"enabled": True,
                                              "apiServer": {"cidrs": ["10.0.0.1/32"]}},
              "redis": {"enabled": True}}  # fmt: skip
    values["console"] = {**SA_CONSOLE["console"], "redis": {}}
    docs = render(values)
    policy = chart.one(docs, "NetworkPolicy", "bgq-console")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "console"
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8090}]
    assert {"namespaceSelector": {"matchLabels": {"bgq.dev/console-access": "true"}}} in ingress[
        "from"
    ]
    api = spec["egress"][0]
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    # the chart's Redis admits the console pods
    redis_policy = chart.one(docs, "NetworkPolicy", "bgq-redis")
    peers = redis_policy["spec"]["ingress"][0]["from"]
    assert any(p.get("podSelector", {}).get("matchLabels", {}).get(
        "app.kubernetes.io/component") == "console" for p in peers)  # fmt: skip
    # without the console: no console policy
    assert not [d for d in render({"networkPolicy": {"enabled": True}})
                if d["metadata"]["name"] == "bgq-console"]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"console": {"enabled": True, "redis": {"url": "redis://r:6379/0"}, "replicas": 2}},
         "sessionSecret"),
        ({"console": {"enabled": True}}, "console.enabled=true needs a Redis"),
        ({"console": {"enabled": True, "redis": {"url": "redis://r", "existingSecret": "s"}}},
         "not both"),
        ({"console": {"enabled": True, "redis": {"url": "redis://r"},
                      "auth": {"proxy": {"groupsHeader": "X-G"}}}}, "userHeader"),
        ({"console": {"enabled": True, "redis": {"url": "redis://r"}, "queues": ["Shop/x"]}},
         "queues"),
        ({"console": {"enabled": True, "redis": {"url": "redis://r"},
                      "auth": {"proxy": {"userHeader": "X User"}}}}, "userHeader"),
        ({"console": {"enabled": True, "colour": "red"}}, "colour"),
    ],
)  # fmt: skip
def test_bad_console_values_are_refused(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    assert message in template_error(helm, tmp_path, values)


def test_notes_say_how_to_reach_the_console(render: Render, tmp_path: Path) -> None:
    from test_chart import render_notes

    notes = render_notes(render, CONSOLE, tmp_path)
    assert "kubectl -n bgq-system port-forward svc/bgq-console 8090" in notes
    assert "Log in with the token in Secret console-token" in notes
    notes = render_notes(render, SA_CONSOLE, tmp_path / "2")
    assert "kubectl create token NAME --audience bgq" in notes
    notes = render_notes(render, {"console": {"enabled": True, "redis": {"url": "redis://r"}}},
                         tmp_path / "3")  # fmt: skip
    assert "It is read-only" in notes
