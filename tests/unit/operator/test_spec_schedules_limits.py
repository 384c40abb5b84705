"""spec.schedules, spec.limits and spec.paused: validation in code and in the CRD schema."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bgq_operator import crdgen
from bgq_operator.errors import InvalidSpecError
from bgq_operator.spec import parse_spec

BASE: dict[str, Any] = {
    "redis": {"url": "redis://r:6379/0"},
    "worker": {"image": "img:1", "tasksModule": "app.tasks"},
}


def spec_schema() -> dict[str, Any]:
    version = crdgen.build_crd()["spec"]["versions"][0]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def schedule_schema() -> dict[str, Any]:
    return dict(spec_schema()["properties"]["schedules"]["items"])


def test_defaults() -> None:
    spec = parse_spec({**BASE, "schedules": [{"name": "nightly", "cron": "@daily", "task": "t"}]})
    assert spec.paused is False and spec.limits is None
    assert spec.schedules is not None
    s = spec.schedules[0]
    assert (s.time_zone, s.overlap, s.priority, s.suspend, s.warm_seconds) == (
        "UTC", "Allow", 1, False, 0,
    )  # fmt: skip
    assert (s.catch_up.max_ticks, s.catch_up.window_seconds) == (1, 3600)


@pytest.mark.parametrize(
    ("schedule", "field", "message"),
    [
        ({"cron": "0 0 30 2 *"}, "spec.schedules.0", "never fires"),
        ({"cron": "61 * * * *"}, "spec.schedules.0", "not a valid"),
        ({"cron": "* * * *"}, "spec.schedules.0.cron", "pattern"),
        ({"timeZone": "Mars/Olympus"}, "spec.schedules.0", "does not exist"),
        ({"overlap": "Sometimes"}, "spec.schedules.0.overlap", ""),
        ({"priority": 3}, "spec.schedules.0.priority", ""),
        ({"name": "Bad_Name"}, "spec.schedules.0.name", "pattern"),
    ],
)
def test_bad_schedule_names_the_field(schedule: dict[str, Any], field: str, message: str) -> None:
    sched = {"name": "s", "cron": "*/5 * * * *", "task": "t", **schedule}
    with pytest.raises(InvalidSpecError, match=re.escape(field)) as info:
        parse_spec({**BASE, "schedules": [sched]})
    assert message in str(info.value)


def test_duplicate_schedule_names() -> None:
    s = {"name": "s", "cron": "@hourly", "task": "t"}
    with pytest.raises(InvalidSpecError, match="must be unique"):
        parse_spec({**BASE, "schedules": [s, s]})
    assert spec_schema()["properties"]["schedules"]["x-kubernetes-list-map-keys"] == ["name"]


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"rate": {"jobs": 0}}, "spec.limits.rate.jobs"),
        ({"rate": {"jobs": 5, "perSeconds": 0}}, "spec.limits.rate.perSeconds"),
        ({"keys": [{"name": "t", "keyFrom": "kwargs.tenant"}]}, "needs concurrency or rate"),
        ({"keys": [{"name": "t", "keyFrom": "body.tenant", "concurrency": 1}]}, "keyFrom"),
        ({"keys": [{"name": "t", "keyFrom": "kwargs.tenant", "concurrency": 0}]}, "concurrency"),
    ],
)
def test_bad_limits(limits: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpecError, match=re.escape(field)):
        parse_spec({**BASE, "limits": limits})


def test_good_limits() -> None:
    spec = parse_spec(
        {
            **BASE,
            "paused": True,
            "limits": {
                "rate": {"jobs": 100, "perSeconds": 60},
                "keys": [
                    {"name": "tenant", "keyFrom": "kwargs.tenant", "concurrency": 2},
                    {"name": "api", "keyFrom": "header.x-api", "rate": {"jobs": 1}},
                ],
            },
        }
    )
    assert spec.paused and spec.limits is not None and spec.limits.rate is not None
    assert spec.limits.rate.per_seconds == 60
    assert spec.limits.keys is not None and spec.limits.keys[1].rate is not None


@pytest.mark.parametrize(
    ("cron", "ok"),
    [
        ("*/5 * * * *", True),
        ("0 9 * * MON-FRI", True),
        ("@hourly", True),
        (" 0 0 1 1 * ", True),
        ("* * * *", False),
        ("* * * * * *", False),
        ("@every 5m", False),
        ("rm -rf /", False),
    ],
)
def test_crd_cron_pattern(cron: str, ok: bool) -> None:
    """The API server's pattern (apply time) agrees with the code on the shape of a cron."""
    pattern = schedule_schema()["properties"]["cron"]["pattern"]
    assert bool(re.search(pattern, cron)) is ok


@pytest.mark.parametrize(
    ("zone", "ok"),
    [("UTC", True), ("Europe/Berlin", True), ("America/Argentina/Buenos_Aires", True),
     ("Etc/GMT+5", True), ("../etc/passwd", False), ("Europe/", False), ("", False)],
)  # fmt: skip
def test_crd_zone_pattern(zone: str, ok: bool) -> None:
    pattern = schedule_schema()["properties"]["timeZone"]["pattern"]
    assert bool(re.search(pattern, zone)) is ok


def test_crd_limit_key_rule_and_rate_minimum() -> None:
    limits = spec_schema()["properties"]["limits"]
    key = limits["properties"]["keys"]["items"]
    assert key["x-kubernetes-validations"][0]["rule"] == "has(self.concurrency) || has(self.rate)"
    assert limits["properties"]["rate"]["properties"]["jobs"]["minimum"] == 1
    per = limits["properties"]["rate"]["properties"]["perSeconds"]
    # Kubernetes' OpenAPI v3 form of "> 0" (a numeric exclusiveMinimum is refused by the API)
    assert per["minimum"] == 0 and per["exclusiveMinimum"] is True


def test_crd_bounds_are_in_kubernetes_form_everywhere() -> None:
    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for key in ("exclusiveMinimum", "exclusiveMaximum"):
                if key in node:
                    assert node[key] is True, f"{path}.{key} must be a boolean"
                    assert ("minimum" if key == "exclusiveMinimum" else "maximum") in node, path
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(spec_schema(), "spec")
