"""Render tests of charts/bgq: lint, RBAC scope and least privilege, pod security, the values
schema, the templated CRD and the helm test hook, each against real `helm template` output."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, KUBE_VERSION, ROOT, Render, run_helm, values_args

from bgq_operator.spec import parse_spec

CLUSTER: dict[str, Any] = {"rbac": {"scope": "cluster"}}
NAMESPACED: dict[str, Any] = {
    "rbac": {"scope": "namespaced"},
    "operator": {"watchNamespaces": ["shop", "etl"]},
}
EVERYTHING: dict[str, Any] = {
    "redis": {"enabled": True},
    "metrics": {
        "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "prom"}},
        "podMonitor": {"enabled": True},
        "dashboard": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
    "tests": {"redisUrl": "redis://redis.infra:6379/0"},
    "image": {"repository": "registry.example/bgq-operator", "tag": "1.2.3"},
    "imagePullSecrets": [{"name": "regcred"}],
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "cluster": CLUSTER,
    "namespaced": NAMESPACED,
    "everything": EVERYTHING,
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, got {[d['metadata'] for d in found]}"
    )
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(``Kind/name``, pod spec) of every workload the chart renders."""
    out = []
    for doc in docs:
        if doc["kind"] == "Pod":
            out.append((f"Pod/{doc['metadata']['name']}", doc["spec"]))
        elif doc["kind"] in WORKLOAD_KINDS:
            out.append(
                (f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
            )
    return out


def operator_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", "bgq")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# -- lint -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(helm: Path, tmp_path: Path, name: str) -> None:
    result = run_helm(
        helm, "lint", "--strict", str(CHART), *values_args(VALUE_SETS[name], tmp_path)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


# -- RBAC -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_no_wildcard_in_any_rule(render: Render, name: str) -> None:
    docs = render(VALUE_SETS[name])
    roles = by_kind(docs, "Role") + by_kind(docs, "ClusterRole")
    assert roles, "the chart renders no RBAC"
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), f"{role['kind']} {field} wildcard: {rule}"
                assert not any("*" in item for item in rule.get(field, [])), rule


def grants(roles: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples the roles allow."""
    return {
        (group, resource, verb)
        for role in roles
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def documented_api_calls() -> set[tuple[str, str, str]]:
    """The table "API calls and RBAC" of docs/operator.md as (apiGroup, resource, verb)."""
    text = (ROOT / "docs" / "operator.md").read_text()
    section = text.split("## API calls and RBAC", 1)[1].split("\n## ", 1)[0]
    calls = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].startswith("`"):
            continue
        group = cells[0].strip("`").strip('"')
        resource = cells[1].strip("`")
        for verb in cells[2].split(","):
            calls.add((group, resource, verb.strip().strip("`")))
    assert calls, "no API call table found in docs/operator.md"
    return calls


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_rbac_is_exactly_the_documented_api_calls(render: Render, scope: str) -> None:
    docs = render({"rbac": {"scope": scope}})
    granted = grants(by_kind(docs, "Role") + by_kind(docs, "ClusterRole"))
    documented = documented_api_calls()
    assert granted == documented, (
        f"granted but not documented: {sorted(granted - documented)}; "
        f"documented but not granted: {sorted(documented - granted)}"
    )


def test_cluster_scope_is_one_clusterrole_bound_to_the_serviceaccount(render: Render) -> None:
    docs = render(CLUSTER)
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    role = one(docs, "ClusterRole")
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "bgq", "namespace": "bgq-system"}
    ]
    one(docs, "ServiceAccount", "bgq")
    assert operator_env(docs)["BGQ_OPERATOR_NAMESPACES"] == ""  # all namespaces


def test_namespaced_scope_has_a_role_per_watched_namespace_and_nothing_cluster_wide(
    render: Render,
) -> None:
    docs = render(NAMESPACED)
    roles = {r["metadata"]["namespace"]: r for r in by_kind(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"shop", "etl"}
    for ns, binding in bindings.items():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == roles[ns]["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "bgq", "namespace": "bgq-system"}
        ]
    cluster_rules = [r for cr in by_kind(docs, "ClusterRole") for r in cr["rules"]]
    namespaced_resources = {res for r in roles["shop"]["rules"] for res in r["resources"]}
    # whatever must be cluster-wide, no namespaced resource is granted cluster-wide
    assert not {res for r in cluster_rules for res in r["resources"]} & namespaced_resources
    assert operator_env(docs)["BGQ_OPERATOR_NAMESPACES"] == "shop,etl"


def test_namespaced_scope_defaults_to_the_release_namespace(render: Render) -> None:
    docs = render({"rbac": {"scope": "namespaced"}}, namespace="queues")
    assert [r["metadata"]["namespace"] for r in by_kind(docs, "Role")] == ["queues"]
    assert operator_env(docs)["BGQ_OPERATOR_NAMESPACES"] == "queues"


def test_namespaced_and_cluster_scope_grant_the_same_rights(render: Render) -> None:
    cluster = render(CLUSTER)
    namespaced = render({"rbac": {"scope": "namespaced"}})
    assert grants(by_kind(cluster, "ClusterRole")) == grants(
        by_kind(namespaced, "Role") + by_kind(namespaced, "ClusterRole")
    )


def test_rbac_create_false_renders_no_rbac(render: Render) -> None:
    docs = render({"rbac": {"create": False}})
    assert not [d for d in docs if d["kind"].endswith(("Role", "RoleBinding"))]


# -- pod security ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_pod_and_container_is_restricted(render: Render, name: str) -> None:
    docs = render(VALUE_SETS[name])
    pods = pod_specs(docs)
    assert len(pods) >= 2  # the operator and the helm test pod at least
    for where, spec in pods:
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container.get("securityContext", {})
            label = f"{where} container {container['name']}"
            assert sc.get("runAsNonRoot") is True, label
            assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, label
            assert sc.get("readOnlyRootFilesystem") is True, label
            assert sc.get("allowPrivilegeEscalation") is False, label
            assert sc.get("privileged", False) is False, label
            assert sc.get("capabilities") == {"drop": ["ALL"]}, label
            assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, label


# -- operator Deployment --------------------------------------------------------------------------


def test_operator_deployment_shape(render: Render) -> None:
    docs = render(EVERYTHING)
    deployment = one(docs, "Deployment", "bgq")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "bgq"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/bgq-operator:1.2.3"
    # no command: the image's ENTRYPOINT (tini -- bgq-operator) keeps tini as PID 1
    assert "command" not in container
    assert container["livenessProbe"]["httpGet"]["port"] == "http"
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


def test_image_tag_defaults_to_app_version(render: Render) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    deployment = one(render(), "Deployment", "bgq")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"bgq-operator:{app_version}"


def test_every_object_has_the_standard_labels(render: Render) -> None:
    for doc in render(EVERYTHING):
        labels = doc["metadata"].get("labels", {})
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks label {key}"


def test_metrics_service_and_service_monitor_select_the_operator(render: Render) -> None:
    docs = render(EVERYTHING)
    service = one(docs, "Service", "bgq-metrics")
    pod_labels = one(docs, "Deployment", "bgq")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert not by_kind(render(), "ServiceMonitor")  # off by default


def test_redis_is_off_by_default_and_labelled_not_for_production(render: Render) -> None:
    assert not [d for d in render() if d["metadata"]["name"].endswith("-redis")]
    docs = render({"redis": {"enabled": True}})
    for kind in ("Deployment", "Service"):
        redis = one(docs, kind, "bgq-redis")
        assert redis["metadata"]["annotations"]["bgq.dev/not-for-production"] == "true"
    template = (CHART / "templates" / "redis.yaml").read_text()
    assert "NOT FOR PRODUCTION" in template


# -- values schema --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "operator.logLevl=DEBUG"], "at '/operator': additional properties 'logLevl'"),
        (["--set", "rbac.scope=namespace"], "at '/rbac/scope': value must be one of"),
        (["--set", "crds.instal=false"], "additional properties 'instal' not allowed"),
        (["--set", "operator.httpPort=0"], "at '/operator/httpPort': minimum"),
        (["--set", "redisUrl=redis://x"], "additional properties 'redisUrl' not allowed"),
        (["--set", "tests.redisUrl=localhost:6379"], "at '/tests/redisUrl'"),
    ],
)
def test_schema_rejects_bad_values_naming_them(helm: Path, args: list[str], expected: str) -> None:
    result = run_helm(helm, "template", "bgq", str(CHART), "--kube-version", KUBE_VERSION, *args)
    assert result.returncode != 0, f"{args} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert expected in result.stderr, result.stderr


def test_schema_requires_a_service_account_name_when_not_created(helm: Path) -> None:
    result = run_helm(
        helm,
        "template",
        "bgq",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "serviceAccount.create=false",
    )
    assert result.returncode != 0
    assert "serviceAccount.name is required" in result.stderr


# -- the CRD --------------------------------------------------------------------------------------

GENERATED_CRD = ROOT / "crds" / "backgroundqueues.bgq.dev.yaml"
CHART_CRD = CHART / "files" / "crds" / "backgroundqueues.bgq.dev.yaml"


def test_chart_crd_file_is_the_generated_one() -> None:
    assert CHART_CRD.read_bytes() == GENERATED_CRD.read_bytes(), (
        "charts/bgq/files/crds/ is out of date: "
        "cp crds/backgroundqueues.bgq.dev.yaml charts/bgq/files/crds/"
    )


def test_rendered_crd_equals_the_generated_one_plus_release_metadata(render: Render) -> None:
    generated = yaml.safe_load(GENERATED_CRD.read_text())
    rendered = one(render(), "CustomResourceDefinition")
    metadata = rendered.pop("metadata")
    expected_metadata = generated.pop("metadata")
    assert rendered == generated
    assert metadata["name"] == expected_metadata["name"]
    assert expected_metadata.get("labels", {}).items() <= metadata["labels"].items()
    assert metadata["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "namespace" not in metadata


def test_crd_install_and_keep_switches(render: Render) -> None:
    assert not by_kind(render({"crds": {"install": False}}), "CustomResourceDefinition")
    crd = one(render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


# -- helm test hook -------------------------------------------------------------------------------


def test_helm_test_hook_enqueues_through_a_real_backgroundqueue(render: Render) -> None:
    docs = render(EVERYTHING)
    queue = one(docs, "BackgroundQueue", "bgq-test")
    pod = one(docs, "Pod", "bgq-test-enqueue")
    for hook in (queue, pod):
        annotations = hook["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "test"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    assert int(queue["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        pod["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    spec = parse_spec(queue["spec"])  # the operator's own validation accepts it
    assert spec.redis.url == "redis://redis.infra:6379/0"
    assert spec.worker.tasks_module == "bgq_helm_test"
    command = pod["spec"]["containers"][0]["command"]
    assert command[:4] == ["bgq", "enqueue", "bgq-system/bgq-test", "bgq_helm_test.echo"]
    assert "--wait" in command


def test_helm_test_queue_name_fits_the_operators_limit(render: Render) -> None:
    long_name = "a-very-long-release-name-that-goes-on-and-on-and-on-and-on-x"
    docs = render({"fullnameOverride": long_name, "tests": {"redisUrl": "redis://r:6379/0"}})
    name = one(docs, "BackgroundQueue")["metadata"]["name"]
    assert len(name) <= 58 and name.endswith("-test"), name


def test_helm_test_without_redis_fails_with_the_reason(render: Render) -> None:
    docs = render()
    assert not by_kind(docs, "BackgroundQueue")
    pod = one(docs, "Pod", "bgq-test-enqueue")
    script = " ".join(pod["spec"]["containers"][0]["command"])
    assert "tests.redisUrl" in script and "exit 1" in script


def test_helm_test_uses_the_chart_redis_when_enabled(render: Render) -> None:
    queue = one(render({"redis": {"enabled": True}}), "BackgroundQueue")
    assert queue["spec"]["redis"]["url"] == "redis://bgq-redis.bgq-system.svc:6379/0"


def test_helm_test_runs_in_a_watched_namespace(render: Render) -> None:
    docs = render({**NAMESPACED, "tests": {"redisUrl": "redis://r:6379/0"}})
    assert one(docs, "BackgroundQueue")["metadata"]["namespace"] == "shop"
    assert one(docs, "Pod")["metadata"]["namespace"] == "shop"


def render_notes(render: Render, values: dict[str, Any], tmp_path: Path) -> str:
    """NOTES.txt as rendered for ``values``.

    `helm template` skips NOTES and `helm install --dry-run` needs a cluster (helm 3.22), so a
    copy of the chart gets a ConfigMap template that includes NOTES.txt by its template name.
    """
    chart = tmp_path / "bgq"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n"
        '{{ include "bgq/templates/NOTES.txt" . | indent 4 }}\n'
    )
    docs = render(values, chart=chart)
    return str(one(docs, "ConfigMap", "notes")["data"]["notes"])


def test_notes_tell_the_next_command(render: Render, tmp_path: Path) -> None:
    notes = render_notes(render, {}, tmp_path)
    assert "kubectl -n bgq-system rollout status deployment/bgq" in notes
    assert "helm test bgq -n bgq-system" in notes
    assert "every namespace" in notes
    assert "set tests.redisUrl=" in notes  # no Redis configured: says what to set
    notes = render_notes(render, {**NAMESPACED, "redis": {"enabled": True}}, tmp_path / "2")
    assert "shop,etl" in notes
    assert "redis://bgq-redis.bgq-system.svc:6379/0" in notes
    assert "NOT FOR PRODUCTION" in notes
    assert "set tests.redisUrl=" not in notes


# -- values, schema and versions


def schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of every property the schema declares (free-form maps are leaves)."""
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths.add(path)
        if sub.get("type") == "object" and "properties" in sub:
            paths |= schema_paths(sub, f"{path}.")
    return paths


def value_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, sub in values.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(sub, dict) and sub:
            paths |= value_paths(sub, f"{path}.")
    return paths


def test_every_schema_property_has_a_documented_default_in_values_yaml() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    declared = schema_paths(schema) - {"global"}
    defaults = value_paths(values)
    # every declared knob has a default users can read; maps like resources.requests are free
    missing = {p for p in declared - defaults if not p.endswith(".claims")}
    assert not missing, f"in values.schema.json but not in values.yaml: {sorted(missing)}"


def test_app_version_is_the_project_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == project
