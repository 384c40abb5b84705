"""Render tests of the gateway's ServiceAccount-token auth (``gateway.auth.serviceAccount``): the
gateway may create TokenReviews and SubjectAccessReviews and nothing else, the three aggregated
queue ClusterRoles grant exactly the verbs bgq.kubeauth checks, and the pod mounts its token only
in this mode."""

from __future__ import annotations

from typing import Any

import test_chart as chart
from chart_helpers import Render
from test_chart_gateway import GATEWAY, env_of, gateway_container

SA_AUTH: dict[str, Any] = {
    **GATEWAY,
    "gateway": {**GATEWAY["gateway"], "auth": {"serviceAccount": {"enabled": True}}},
}


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_off_by_default_no_review_rbac_no_token(render: Render) -> None:
    docs = render(GATEWAY)
    names = {d["metadata"]["name"] for d in chart.by_kind(docs, "ClusterRole")}
    assert not {n for n in names if "gateway" in n or n.startswith("bgq-enq")}
    assert "BGQ_GATEWAY_AUTH_SERVICEACCOUNT" not in env_of(gateway_container(docs))


def test_gateway_may_only_create_the_two_reviews(render: Render) -> None:
    docs = render(SA_AUTH, namespace="bgq-system")
    role = chart.one(docs, "ClusterRole", "bgq-gateway-reviews")
    assert rules_of(role) == {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }
    binding = chart.one(docs, "ClusterRoleBinding", "bgq-gateway-reviews")
    assert binding["roleRef"]["name"] == "bgq-gateway-reviews"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "bgq-gateway", "namespace": "bgq-system"}
    ]
    pod = chart.one(docs, "Deployment", "bgq-gateway")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    env = env_of(gateway_container(docs))
    assert (env["BGQ_GATEWAY_AUTH_SERVICEACCOUNT"], env["BGQ_GATEWAY_KUBE_AUDIENCE"]) == (
        "true",
        "bgq",
    )


def test_aggregated_queue_roles_grant_the_checked_verbs(render: Render) -> None:
    docs = render(SA_AUTH)
    jobs, dead = "backgroundqueues/jobs", "backgroundqueues/deadletters"
    expected = {
        "bgq-enqueuer": ("edit", {("bgq.dev", jobs, "create"), ("bgq.dev", jobs, "get")}),
        "bgq-viewer": ("view", {("bgq.dev", jobs, "get"), ("bgq.dev", dead, "get")}),
        "bgq-admin": (
            "admin",
            {("bgq.dev", jobs, v) for v in ("create", "get", "delete")}
            | {("bgq.dev", dead, v) for v in ("get", "update", "delete")}
            | {("bgq.dev", "backgroundqueues/pause", "update")},  # the console's pause/resume
        ),
    }
    for name, (aggregate, rules) in expected.items():
        role = chart.one(docs, "ClusterRole", name)
        assert rules_of(role) == rules, name
        labels = role["metadata"]["labels"]
        assert labels[f"rbac.authorization.k8s.io/aggregate-to-{aggregate}"] == "true"
    # the verbs the gateway asks for (bgq.gateway._PERMISSIONS) are all grantable
    from bgq.gateway import _PERMISSIONS

    admin = rules_of(chart.one(docs, "ClusterRole", "bgq-admin"))
    for verb, sub in _PERMISSIONS.values():
        assert ("bgq.dev", f"backgroundqueues/{sub}", verb) in admin


def test_role_name_prefix(render: Render) -> None:
    values = {
        **SA_AUTH,
        "gateway": {
            **GATEWAY["gateway"],
            "auth": {"serviceAccount": {"enabled": True, "roleNamePrefix": "queues"}},
        },
    }
    names = {d["metadata"]["name"] for d in chart.by_kind(render(values), "ClusterRole")}
    assert {"queues-enqueuer", "queues-viewer", "queues-admin"} <= names
