"""The chart's PrometheusRule: every alert is unit-tested with ``promtool test rules``.

promtool (Prometheus' own rule evaluator) is built from the Go module proxy by
hack/promtool/install and cached under ~/.cache/bgq/promtool-<version>/. The test renders the
real template with helm, writes its groups as a rule file and runs the cases in
alerts/bgq-alerts.test.yaml against it, so the rules that ship are the rules that are tested.
The dashboard's expressions are syntax-checked by the same promtool.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import ROOT, Render
from promql_names import PROMETHEUS_SERIES, exported_names, metric_names
from test_chart_observability import dashboard_expressions

ALERT_TESTS = Path(__file__).parent / "alerts" / "bgq-alerts.test.yaml"
ENABLED = {"metrics": {"prometheusRule": {"enabled": True}}}


@pytest.fixture(scope="session")
def promtool() -> Path:
    """The pinned promtool (built on first use: several minutes cold, then cached)."""
    explicit = os.environ.get("BGQ_PROMTOOL")
    if explicit:
        return Path(explicit)
    proc = subprocess.run(
        [str(ROOT / "hack" / "promtool" / "install")],
        capture_output=True, text=True, timeout=3000, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"hack/promtool/install failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _rules(render: Render, values: dict[str, Any] | None = None) -> dict[str, Any]:
    docs = render({**ENABLED, **(values or {})})
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return rule


def _run(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def _alerts(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def test_prometheus_rule_is_valid_and_passes_every_unit_test(
    render: Render, promtool: Path, tmp_path: Path
) -> None:
    rule = _rules(render)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    (tmp_path / "tests.yaml").write_text(ALERT_TESTS.read_text())
    check = _run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    result = _run(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_case_that_fires_it(render: Render) -> None:
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    tests = [t for case in cases for t in case.get("alert_rule_test", [])]
    fired = {t["alertname"] for t in tests if t.get("exp_alerts")}
    silent = {t["alertname"] for t in tests if not t.get("exp_alerts")}
    names = {a["alert"] for a in _alerts(_rules(render))}
    assert names == fired, f"alerts without a firing case: {names - fired}"
    assert names == silent, f"alerts without a case where they stay silent: {names - silent}"


def test_every_alert_names_only_metrics_bgq_exports(render: Render) -> None:
    exported = exported_names() | PROMETHEUS_SERIES
    for alert in _alerts(_rules(render)):
        names = metric_names(alert["expr"])
        assert names and not names - exported, (alert["alert"], names - exported)
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_alert_settings_reach_the_rules(render: Render) -> None:
    rule = _rules(
        render,
        {
            "metrics": {
                "prometheusRule": {
                    "enabled": True,
                    "namespace": "monitoring",
                    "additionalLabels": {"release": "prom"},
                    "alertLabels": {"team": "platform"},
                    "operatorSelector": 'job="custom"',
                    "for": {"pinnedAtMaxReplicas": "30m"},
                    "deadLetterThreshold": 5,
                }
            }
        },
    )
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = {a["alert"]: a for a in _alerts(rule)}
    assert all(a["labels"]["team"] == "platform" for a in alerts.values())
    assert alerts["BgqPinnedAtMaxReplicas"]["for"] == "30m"
    assert alerts["BgqRedisUnreachable"]["for"] == "2m"  # defaults kept for the others
    assert alerts["BgqOperatorDown"]["expr"].strip() == 'absent(up{job="custom"} == 1)'
    assert alerts["BgqDeadLettersGrowing"]["expr"].strip().endswith("> 5")


def test_dashboard_expressions_parse_with_promtool(promtool: Path, tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL (Grafana's variables replaced by values)."""
    subst = {"$__rate_interval": "1m", "$__range": "1h", "$namespace": ".*", "$queue": ".*"}
    rules = []
    for i, (title, query) in enumerate(dashboard_expressions()):
        expr = query
        for var, value in subst.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"bgq:dashboard:{i}", "expr": expr, "labels": {"panel": title}})
    (tmp_path / "dash.yaml").write_text(json.dumps({"groups": [{"name": "d", "rules": rules}]}))
    check = _run(promtool, "check", "rules", "dash.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
