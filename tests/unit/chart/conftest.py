"""Fixtures for the Helm chart tests: the helm binary and a renderer for charts/bgq.

A missing helm fails the tests with the command that builds it (never a silent skip): a chart
that is never rendered is not tested.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import (
    CHART,
    HELM_BUILD_HINT,
    KUBE_VERSION,
    Render,
    find_helm,
    load_manifests,
    run_helm,
    values_args,
)


@pytest.fixture(scope="session")
def helm() -> Path:
    """Path of a working helm binary; fails (never skips) with how to build one."""
    path = find_helm()
    if path is None or not os.access(path, os.X_OK):
        where = path or "no ~/.cache/bgq/helm-*/bin/helm"
        pytest.fail(f"helm binary not found ({where}): {HELM_BUILD_HINT}")
    return path


@pytest.fixture
def render(helm: Path, tmp_path: Path) -> Render:
    """``render(values, namespace=..., release=..., chart=...)``: the chart's objects as dicts.

    Fails the test with helm's own message when rendering fails.
    """

    def _render(
        values: dict[str, Any] | None = None,
        *,
        namespace: str = "bgq-system",
        release: str = "bgq",
        chart: Path = CHART,
    ) -> list[dict[str, Any]]:
        result = run_helm(
            helm,
            "template",
            release,
            str(chart),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            *values_args(values, tmp_path),
        )
        if result.returncode != 0:
            pytest.fail(f"helm template failed:\n{result.stderr}")
        return load_manifests(result.stdout)

    return _render
