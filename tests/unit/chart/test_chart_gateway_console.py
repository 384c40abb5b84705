"""Render tests of the web console served by the gateway (``gateway.console.enabled``): the flag
(``BGQ_GATEWAY_CONSOLE``) and the console's settings (from ``console.*``) on the gateway's
container, the image with the console extra, no standalone console, and the refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_helpers import CHART, Render, run_helm, values_args
from test_chart_gateway import GATEWAY, env_of, gateway_container, template_error

WITH_CONSOLE: dict[str, Any] = {
    **GATEWAY,
    "gateway": {**GATEWAY["gateway"], "replicas": 1, "console": {"enabled": True}},
    "console": {
        "queues": ["shop/orders"],
        "auth": {"existingSecret": "console-token", "sessionSecret": {"existingSecret": "cs"}},
        "secureCookies": True,
    },
}


def test_off_by_default_the_gateway_has_no_console(render: Render) -> None:
    env = env_of(gateway_container(render(GATEWAY)))
    assert not [name for name in env if "CONSOLE" in name]


def test_the_gateway_serves_the_console_configured_by_the_console_values(
    render: Render,
) -> None:
    docs = render(WITH_CONSOLE)
    container = gateway_container(docs)
    env = env_of(container)
    assert env["BGQ_GATEWAY_CONSOLE"] == "true"
    assert env["BGQ_CONSOLE_QUEUES"] == "shop/orders"
    assert env["BGQ_CONSOLE_TOKEN"] == {"secretKeyRef": {"name": "console-token", "key": "token"}}
    assert env["BGQ_CONSOLE_SECRET"] == {"secretKeyRef": {"name": "cs", "key": "secret"}}
    assert env["BGQ_CONSOLE_SECURE_COOKIES"] == "true"
    # the gateway's own token still guards /v1
    assert env["BGQ_GATEWAY_TOKEN"] == {"secretKeyRef": {"name": "gateway-token", "key": "bearer"}}
    assert container["command"][:4] == ["tini", "--", "bgq", "gateway"]
    # the image stays the worker image unless one with the console extra is named
    assert container["image"] == "registry.example/bgq-worker:1.2.3"
    deployments = [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"]
    assert not [name for name in deployments if "console" in name]  # no standalone console
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names))


def test_the_console_image_is_used_while_the_console_is_on(render: Render) -> None:
    image = {"repository": "registry.example/bgq-console", "tag": "1.2.3"}
    on = {"enabled": True, "image": image}
    values = {**WITH_CONSOLE, "gateway": {**WITH_CONSOLE["gateway"], "console": on}}
    assert gateway_container(render(values))["image"] == "registry.example/bgq-console:1.2.3"
    off = {**GATEWAY, "gateway": {**GATEWAY["gateway"], "console": {"image": image}}}
    assert gateway_container(render(off))["image"] == "registry.example/bgq-worker:1.2.3"


def test_serviceaccount_login_rides_on_the_gateways_review_rbac(render: Render) -> None:
    gateway = {**WITH_CONSOLE["gateway"], "auth": {"serviceAccount": {"enabled": True}}}
    console = {"auth": {"serviceAccount": {"enabled": True}}}
    env = env_of(gateway_container(render({**WITH_CONSOLE, "gateway": gateway,
                                           "console": console})))  # fmt: skip
    assert env["BGQ_CONSOLE_AUTH_SERVICEACCOUNT"] == "true"
    assert env["BGQ_GATEWAY_AUTH_SERVICEACCOUNT"] == "true"
    assert env["BGQ_GATEWAY_KUBE_AUDIENCE"] == "bgq"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**WITH_CONSOLE, "gateway": {**WITH_CONSOLE["gateway"], "replicas": 2},
          "console": {"auth": {"existingSecret": "t"}}},
         "needs console.auth.sessionSecret.existingSecret"),
        ({**WITH_CONSOLE, "console": {"auth": {"serviceAccount": {"enabled": True}}}},
         "needs gateway.auth.serviceAccount.enabled"),
        ({**WITH_CONSOLE, "gateway": {**WITH_CONSOLE["gateway"],
                                      "auth": {"serviceAccount": {"enabled": True}}},
          "console": {"auth": {"serviceAccount": {"enabled": True, "audience": "other"}}}},
         "must equal gateway.auth.serviceAccount.audience"),
    ],
)  # fmt: skip
def test_bad_values_are_refused(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    assert message in template_error(helm, tmp_path, values)


def test_schema_knows_the_option(helm: Path, tmp_path: Path) -> None:
    stderr = template_error(helm, tmp_path, {}, "--set", "gateway.console.enabled=yes")
    assert "at '/gateway/console/enabled'" in stderr
    stderr = template_error(helm, tmp_path, {}, "--set", "gateway.console.port=1")
    assert "at '/gateway/console'" in stderr and "'port'" in stderr


def test_helm_lint_strict_with_the_console_in_the_gateway(helm: Path, tmp_path: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *values_args(WITH_CONSOLE, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_notes_give_the_console_url(render: Render, tmp_path: Path) -> None:
    from test_chart import render_notes

    notes = render_notes(render, WITH_CONSOLE, tmp_path / "on")
    assert "/console/ (its own login" in notes and "svc:8000/console/" in notes
    assert "/console/" not in render_notes(render, GATEWAY, tmp_path / "off")
