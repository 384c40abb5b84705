"""The chart's observability parts: worker PodMonitor, scrape annotations, Grafana dashboard.

The dashboard must only use metrics bgq exports (checked against the real registries), so no
panel silently shows nothing; selectors must match what the operator really builds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from chart_helpers import CHART, Render
from promql_names import PROMETHEUS_SERIES, exported_names, metric_names

from bgq_operator.manifests import (
    CONTAINER_NAME,
    ManifestOptions,
    build_deployment,
    worker_labels,
)
from bgq_operator.spec import parse_spec

DASHBOARD = CHART / "files" / "dashboards" / "bgq.json"


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _worker_deployment(options: ManifestOptions, **worker: Any) -> dict[str, Any]:
    spec = parse_spec(
        {
            "redis": {"url": "redis://r:6379/0"},
            "worker": {"image": "w", "tasksModule": "app.tasks", **worker},
        }
    )
    return build_deployment("jobs", "apps", "uid-1", spec, 1, options=options)


def _operator_env(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_observability_objects_are_off_by_default(render: Render) -> None:
    docs = render()
    assert not _by_kind(docs, "PodMonitor")
    assert not _by_kind(docs, "PrometheusRule")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-dashboard")]
    operator = next(d for d in docs if d["kind"] == "Deployment")
    env = _operator_env(operator)
    assert env["BGQ_OPERATOR_WORKER_SCRAPE_ANNOTATIONS"] == "false"


def test_pod_monitor_selects_the_worker_pods_the_operator_builds(render: Render) -> None:
    monitoring = {"podMonitor": {"enabled": True, "additionalLabels": {"release": "p"}}}
    docs = render({"metrics": monitoring})
    (monitor,) = _by_kind(docs, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "p"
    pod = _worker_deployment(ManifestOptions())["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # a label every worker pod has but other pods (the operator, the gateway) do not
    assert monitor["spec"]["selector"]["matchLabels"].items() <= worker_labels("x").items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == CONTAINER_NAME]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    assert endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}


def test_pod_monitor_follows_the_watched_namespaces(render: Render) -> None:
    docs = render(
        {"operator": {"watchNamespaces": ["a", "b"]}, "metrics": {"podMonitor": {"enabled": True}}}
    )
    (monitor,) = _by_kind(docs, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_scrape_annotations_value_reaches_the_operator(render: Render) -> None:
    docs = render({"metrics": {"workerScrapeAnnotations": True}})
    operator = next(d for d in docs if d["kind"] == "Deployment")
    env = _operator_env(operator)
    assert env["BGQ_OPERATOR_WORKER_SCRAPE_ANNOTATIONS"] == "true"


def test_scrape_annotations_on_worker_pods_only_when_enabled_and_the_queue_wins() -> None:
    off = _worker_deployment(ManifestOptions())["spec"]["template"]["metadata"]
    assert "annotations" not in off
    on = _worker_deployment(ManifestOptions(scrape_annotations=True))["spec"]["template"]
    assert on["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(on["spec"]["containers"][0]["ports"][0]["containerPort"]),
        "prometheus.io/path": "/metrics",
    }
    mine = _worker_deployment(
        ManifestOptions(scrape_annotations=True),
        podAnnotations={"prometheus.io/scrape": "false", "team": "x"},
    )["spec"]["template"]["metadata"]["annotations"]
    assert mine["prometheus.io/scrape"] == "false" and mine["team"] == "x"


def test_operator_flag_and_environment_set_scrape_annotations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bgq_operator.__main__ import parse_args

    monkeypatch.delenv("BGQ_OPERATOR_WORKER_SCRAPE_ANNOTATIONS", raising=False)
    assert parse_args([]).worker_scrape_annotations is False
    assert parse_args(["--worker-scrape-annotations"]).worker_scrape_annotations is True
    monkeypatch.setenv("BGQ_OPERATOR_WORKER_SCRAPE_ANNOTATIONS", "true")
    assert parse_args([]).worker_scrape_annotations is True
    assert parse_args(["--no-worker-scrape-annotations"]).worker_scrape_annotations is False


def test_dashboard_config_map_carries_the_sidecar_label_and_the_file(render: Render) -> None:
    docs = render(
        {
            "metrics": {
                "dashboard": {
                    "enabled": True,
                    "namespace": "monitoring",
                    "annotations": {"grafana_folder": "bgq"},
                }
            }
        }
    )
    (cm,) = [d for d in docs if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "bgq"}
    assert json.loads(cm["data"]["bgq.json"]) == json.loads(DASHBOARD.read_text())


def _panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard, variables included."""
    dash = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            inner = var["query"]["query"]
            out.append((f"${var['name']}", inner.removeprefix("label_values(").rsplit(",", 1)[0]))
    return out


def test_every_dashboard_expression_names_only_metrics_bgq_exports() -> None:
    exported = exported_names() | PROMETHEUS_SERIES
    for title, expr in dashboard_expressions():
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric found in {expr!r}"
        unknown = names - exported
        assert not unknown, f"panel {title!r} uses metrics bgq does not export: {unknown}"


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    used = set().union(*(metric_names(e) for _, e in dashboard_expressions()))
    for metric in (
        "bgq_operator_queue_backlog", "bgq_operator_queue_in_flight", "bgq_operator_queue_due",
        "bgq_operator_desired_replicas", "bgq_operator_replicas",
        "bgq_job_queue_wait_seconds_bucket", "bgq_jobs_succeeded_total",
        "bgq_jobs_failed_total", "bgq_operator_queue_dead", "bgq_operator_interrupted_jobs_total",
        "bgq_operator_decision_seconds_bucket", "bgq_operator_redis_reachable",
    ):  # fmt: skip
        assert metric in used, f"the dashboard shows no panel over {metric}"


def test_every_panel_is_described_and_uses_the_datasource_variable() -> None:
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert len(panel.get("description", "")) > 20, f"{panel['title']!r} has no description"
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], f"{panel['title']!r} has no query"
