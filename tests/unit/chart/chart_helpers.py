"""Helpers for the Helm chart tests: where the chart and helm are, and how to run helm.

helm is not packaged for Debian; hack/cluster/install builds it from the Go module proxy and
caches it under ``~/.cache/bgq/helm-<version>/bin/helm`` (``$BGQ_CACHE_DIR`` overrides the
cache root, ``$BGQ_HELM`` names a binary directly).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "bgq"
# The Kubernetes version templates are rendered for (the test cluster's minor). A helm built
# without its Makefile's ldflags assumes v1.20 otherwise, below the chart's kubeVersion.
KUBE_VERSION = "v1.36.0"
HELM_BUILD_HINT = (
    "build it with `hack/cluster/install --no-apt` (compiles helm from the Go module proxy "
    "into ~/.cache/bgq/helm-<version>/bin/helm; needs Go 1.26) or point $BGQ_HELM at a helm 3 "
    "binary"
)


def find_helm() -> Path | None:
    """The helm binary: ``$BGQ_HELM``, else the pinned one ``hack/cluster/env`` names (the
    cluster scripts are the single source of truth for versions), else any cached build."""
    explicit = os.environ.get("BGQ_HELM")
    if explicit:
        return Path(explicit)
    env_script = ROOT / "hack" / "cluster" / "env"
    if env_script.exists():
        proc = subprocess.run(
            ["bash", str(env_script)], capture_output=True, text=True, timeout=30, check=False
        )
        for line in proc.stdout.splitlines():
            if line.startswith("HELM="):
                return Path(line.removeprefix("HELM="))
    cache = Path(os.environ.get("BGQ_CACHE_DIR", Path.home() / ".cache" / "bgq"))
    found = sorted(cache.glob("helm-*/bin/helm"))
    return found[-1] if found else None


@dataclass
class HelmResult:
    """Outcome of one helm command."""

    returncode: int
    stdout: str
    stderr: str


def run_helm(helm: Path, *args: str) -> HelmResult:
    """Run helm with a private, empty configuration (no repositories, no kubeconfig)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "HELM_CACHE_HOME": "/tmp/bgq-chart-tests/cache",
        "HELM_CONFIG_HOME": "/tmp/bgq-chart-tests/config",
        "HELM_DATA_HOME": "/tmp/bgq-chart-tests/data",
        "KUBECONFIG": "/nonexistent",
    }
    proc = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    return HelmResult(proc.returncode, proc.stdout, proc.stderr)


Render = Callable[..., list[dict[str, Any]]]


def values_args(values: dict[str, Any] | None, tmp_path: Path) -> list[str]:
    """``--values FILE`` for a values mapping (written next to the test's other files)."""
    if not values:
        return []
    path = tmp_path / f"values-{abs(hash(repr(values)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["--values", str(path)]


class StrictLoader(yaml.SafeLoader):
    """A YAML loader that rejects duplicate mapping keys (the API server's decoder does too,
    and PyYAML would silently keep the last one)."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
    duplicated = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicated:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {duplicated}", node.start_mark
        )
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_manifests(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream, strictly parsed, empty documents dropped."""
    return [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc]
