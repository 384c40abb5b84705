"""Render tests of the chart's NetworkPolicies (``networkPolicy.enabled``): off by default; when on,
each bgq pod is selected by exactly one policy, egress is limited to the API server (operator),
Redis and DNS, and ingress to the ports and peers the values name — nothing is open to all."""

from __future__ import annotations

from typing import Any

import test_chart as chart
from chart_helpers import Render

ON: dict[str, Any] = {
    "networkPolicy": {"enabled": True},
    "gateway": {"enabled": True},
    "redis": {"enabled": True},
    "operator": {"watchNamespaces": ["team-a", "team-b"]},
}


def policies(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"]
        for d in chart.by_kind(docs, "NetworkPolicy")
    }


def egress_ports(spec: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]}


def test_off_by_default(render: Render) -> None:
    assert chart.by_kind(render(), "NetworkPolicy") == []
    assert chart.by_kind(render({**ON, "networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_one_policy_per_component_and_worker_namespace(render: Render) -> None:
    found = policies(render(ON, namespace="bgq-system"))
    assert set(found) == {
        ("bgq-system", "bgq-operator"),
        ("bgq-system", "bgq-gateway"),
        ("bgq-system", "bgq-redis"),
        ("team-a", "bgq-workers"),
        ("team-b", "bgq-workers"),
    }
    assert found[("team-a", "bgq-workers")]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "bgq-worker"}  # the operator's pod label
    }


def test_egress_is_api_server_redis_and_dns_only(render: Render) -> None:
    found = policies(render(ON, namespace="bgq-system"))
    dns = {("UDP", 53), ("TCP", 53)}
    assert egress_ports(found[("bgq-system", "bgq-operator")]) == {
        ("TCP", 443), ("TCP", 6443), ("TCP", 6379), *dns
    }
    assert egress_ports(found[("bgq-system", "bgq-gateway")]) == {("TCP", 6379), *dns}
    assert egress_ports(found[("team-a", "bgq-workers")]) == {("TCP", 6379), *dns}
    redis_rule = found[("team-a", "bgq-workers")]["egress"][0]
    assert redis_rule["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "bgq-system"}},
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "bgq",
                    "app.kubernetes.io/instance": "bgq",
                    "app.kubernetes.io/component": "redis",
                }
            },
        }
    ]
    for spec in found.values():
        assert "Ingress" in spec["policyTypes"]


def test_cidrs_and_extra_egress(render: Render) -> None:
    values = {
        **ON,
        "redis": {"enabled": False},
        "networkPolicy": {
            "enabled": True,
            "apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [6443]},
            "redis": {"cidrs": ["10.9.0.0/24"], "ports": [6379, 26379]},
            "worker": {
                "namespaces": ["jobs"],
                "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.50.0.0/16"}}],
                                 "ports": [{"protocol": "TCP", "port": 443}]}],
            },
        },
        "gateway": {"enabled": True, "redis": {"url": "redis://r:6379/0"}},
    }
    found = policies(render(values, namespace="bgq-system"))
    assert ("bgq-system", "bgq-redis") not in found
    assert set(k for k in found if k[1] == "bgq-workers") == {("jobs", "bgq-workers")}
    operator = found[("bgq-system", "bgq-operator")]
    assert operator["egress"][0] == {
        "ports": [{"protocol": "TCP", "port": 6443}],
        "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
    }
    assert operator["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.9.0.0/24"}}]
    workers = found[("jobs", "bgq-workers")]
    assert workers["egress"][-1]["to"] == [{"ipBlock": {"cidr": "10.50.0.0/16"}}]
    assert egress_ports(workers) >= {("TCP", 26379), ("TCP", 443)}


def test_ingress_is_never_open_to_everyone(render: Render) -> None:
    choices: list[list[dict[str, Any]] | None] = [[], None]
    for metrics_from in choices:
        values = {**ON, "networkPolicy": {"enabled": True}}
        if metrics_from is not None:
            values["networkPolicy"]["metricsFrom"] = metrics_from
        for spec in policies(render(values)).values():
            for rule in spec.get("ingress") or []:
                assert rule.get("from"), f"an ingress rule without peers allows anyone: {spec}"
    none = {**ON, "networkPolicy": {"enabled": True, "metricsFrom": []}}
    found = policies(render(none, namespace="bgq-system"))
    assert found[("bgq-system", "bgq-operator")]["ingress"] == []
    assert found[("team-a", "bgq-workers")]["ingress"] == []
    gateway = found[("bgq-system", "bgq-gateway")]["ingress"]
    assert gateway == [
        {
            "ports": [{"protocol": "TCP", "port": 8000}],
            "from": [
                {"podSelector": {}},
                {"namespaceSelector": {"matchLabels": {"bgq.dev/gateway-access": "true"}}},
            ],
        }
    ]
