"""The chart with `make demo`'s values (examples/demo/values.yaml): the trial Redis runs the
registry-free Debian image without pulling, the gateway is on and finds that Redis, and the
release asks for nothing cluster-wide (namespaced RBAC, CRD applied apart)."""

from __future__ import annotations

from typing import Any

import test_chart as chart
import yaml
from chart_helpers import ROOT, Render

VALUES = ROOT / "examples" / "demo" / "values.yaml"


def demo_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    # what make demo adds on the command line
    values["image"]["tag"] = "0123456789abcdef"
    values["worker"]["image"]["tag"] = "fedcba9876543210"
    values["redis"]["image"]["tag"] = "7.0.15-d8f2286a463d"
    values["operator"] = {"watchNamespaces": ["bgq-demo"]}
    return values


def test_demo_values_render_redis_gateway_and_no_cluster_objects(render: Render) -> None:
    docs = render(demo_values(), namespace="bgq-demo", release="bgq")
    redis = chart.one(docs, "Deployment", "bgq-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "bgq.local/redis:7.0.15-d8f2286a463d"
    assert container["imagePullPolicy"] == "Never"
    assert container["command"] == ["redis-server"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    gateway = chart.one(docs, "Deployment", "bgq-gateway")
    (gw,) = gateway["spec"]["template"]["spec"]["containers"]
    assert gw["image"] == "bgq.local/bgq-worker:fedcba9876543210"
    env = {e["name"]: e.get("value") for e in gw["env"]}
    assert env["BGQ_REDIS_URL"] == "redis://bgq-redis.bgq-demo.svc:6379/0"
    operator = chart.one(docs, "Deployment", "bgq")
    assert operator["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}, kinds
