"""The metric-name extractor the dashboard and alert tests rely on."""

from __future__ import annotations

import pytest
from promql_names import exported_names, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (queue) (rate(bgq_jobs_started_total{queue=~"($namespace)/($queue)"}[5m]))',
         {"bgq_jobs_started_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(bgq_operator_decision_seconds_bucket"
         "[$__rate_interval])))", {"bgq_operator_decision_seconds_bucket"}),
        ("max by (namespace, queue) (a_metric) > on (namespace, queue) group_left() "
         "max by (namespace, queue) (b_metric)", {"a_metric", "b_metric"}),
        ('label_replace(increase(x_total[15m]), "queue", "$2", "queue", "([^/]+)/(.+)") > 0',
         {"x_total"}),
        ('absent(up{job="bgq-metrics"} == 1)', {"up"}),
        ("sum(increase(c_total[$__range])) or vector(0)", {"c_total"}),
        ("rate(m[5m] offset 1h) * 1e3 and bool inf", {"m"}),
    ],
)  # fmt: skip
def test_metric_names_finds_exactly_the_selected_metrics(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_exported_names_cover_worker_and_operator_families() -> None:
    names = exported_names()
    assert {
        "bgq_jobs_started_total",
        "bgq_jobs_running",
        "bgq_job_queue_wait_seconds_bucket",
        "bgq_operator_desired_replicas",
        "bgq_operator_interrupted_jobs_total",
        "bgq_operator_decision_seconds_count",
    } <= names
    assert "bgq_jobs_started" not in names  # counters only as _total samples
