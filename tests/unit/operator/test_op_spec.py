"""The BackgroundQueue spec models and the generated CRD agree, and the CRD file does not drift."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bgq_operator import crdgen
from bgq_operator.errors import InvalidSpecError
from bgq_operator.spec import MANAGED_ENV, parse_spec

MINIMAL: dict[str, Any] = {
    "redis": {"url": "redis://redis:6379/0"},
    "worker": {"image": "example/tasks:1", "tasksModule": "myapp.tasks"},
}


def with_(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with ``path`` (dotted) set to ``value``."""
    out: dict[str, Any] = json.loads(json.dumps(base))
    node = out
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return out


def test_committed_crd_matches_the_models() -> None:
    assert crdgen.CRD_PATH.read_text() == crdgen.render(), "run `make crds`"
    assert crdgen.main(["--check"]) == 0


def test_check_reports_drift(tmp_path: Any) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text("old")
    assert crdgen.main(["--check", "--path", str(stale)]) == 1


def test_minimal_spec_gets_the_documented_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.worker.concurrency == 10
    assert spec.worker.image_pull_policy == "IfNotPresent"
    assert spec.scaling.enabled is True
    assert (spec.scaling.min_replicas, spec.scaling.max_replicas) == (0, 10)
    assert spec.scaling.target_jobs_per_pod(spec.worker.concurrency) == 10
    assert spec.scaling.on_redis_unavailable == "Keep"
    assert spec.jobs.backoff.max_seconds == 300
    assert spec.drain_seconds == 25
    assert spec.replicas == 1


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("scaling.minReplicas", 5, "minReplicas must be <= spec.scaling.maxReplicas"),
        ("redis.urlSecretRef", {"name": "s", "key": "url"}, "exactly one of spec.redis.url"),
        ("worker.image", "", "spec.worker.image"),
        ("worker.tasksModule", "not a module", "spec.worker.tasksModule"),
        ("worker.concurrency", 0, "spec.worker.concurrency"),
        ("scaling.onRedisUnavailable", "Explode", "spec.scaling.onRedisUnavailable"),
        ("jobs.backoff", {"baseSeconds": 10, "maxSeconds": 1}, "baseSeconds must be <="),
        ("worker.env", [{"name": "BGQ_QUEUE", "value": "x"}], "must not set BGQ_QUEUE"),
        ("redis.url", "http://nope", "spec.redis.url"),
    ],
)
def test_invalid_specs_name_the_field(path: str, value: Any, needle: str) -> None:
    bad = with_(MINIMAL, path, value)
    if path == "scaling.minReplicas":
        bad["scaling"]["maxReplicas"] = 2
    with pytest.raises(InvalidSpecError, match=needle.replace(".", r"\.")):
        parse_spec(bad)


def test_missing_required_fields_are_all_listed() -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec({"redis": {"url": "redis://r"}, "worker": {}})
    assert "spec.worker.image" in str(info.value)
    assert "spec.worker.tasksModule" in str(info.value)


def test_user_env_may_set_unmanaged_bgq_variables() -> None:
    spec = parse_spec(with_(MINIMAL, "worker.env", [{"name": "BGQ_LOG_LEVEL", "value": "DEBUG"}]))
    assert spec.worker.env is not None and spec.worker.env[0].value == "DEBUG"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found.extend(_walk(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_walk(value, f"{path}/{i}"))
    return found


def test_crd_schema_is_structural() -> None:
    version = crdgen.build_crd()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        for banned in ("$ref", "anyOf", "allOf", "oneOf", "title", "nullable"):
            assert banned not in node, f"{banned} at {path}"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert path.endswith(
                (
                    "/affinity",
                    "/valueFrom",
                    "/envFrom/items",
                    "/args/items",
                    "/additionalProperties",
                )
            ), path
    # every property is typed (or int-or-string) and described
    for path, node in _walk(schema["properties"]["spec"]):
        if "/properties/" in path and path.rsplit("/", 2)[-2] == "properties":
            assert "type" in node or node.get("x-kubernetes-int-or-string"), path
            assert node.get("description"), f"no description at {path}"
    assert "x-kubernetes-preserve-unknown-fields" not in schema["properties"]["status"]


def test_crd_has_subresources_columns_and_cel_rules() -> None:
    crd = crdgen.build_crd()
    assert crd["spec"]["names"]["shortNames"] == ["bgq"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert version["subresources"]["status"] == {}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == [
        "Ready", "Backlog", "In-Flight", "Replicas", "Desired", "Next", "Age", "Reason"
    ]  # fmt: skip
    assert columns["Reason"]["priority"] == 1
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = json.dumps(spec)
    assert "self.minReplicas <= self.maxReplicas" in rules
    assert "has(self.url) != has(self.urlSecretRef)" in rules
    for name in MANAGED_ENV:
        assert f"'{name}'" in rules
    assert spec["properties"]["scaling"]["default"]["maxReplicas"] == 10
    assert "default" not in spec["properties"]["redis"]
    assert spec["required"] == ["redis", "worker"]
