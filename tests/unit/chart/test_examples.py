"""examples/: the BackgroundQueue manifests pass the operator's own validation and name a task
module that exists; the tasks module registers the tasks the comments tell users to enqueue.
(tests/e2e/test_helm.py applies them to the real API server as well.)"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import ROOT

from bgq.task import lookup
from bgq_operator.spec import parse_spec

EXAMPLES = ROOT / "examples"
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))


def queues(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "BackgroundQueue"]


@pytest.mark.parametrize("path", [p for p in MANIFESTS if queues(p)], ids=lambda p: p.name)
def test_example_queues_are_valid_specs(path: Path) -> None:
    for queue in queues(path):
        assert queue["apiVersion"] == "bgq.dev/v1alpha1"
        spec = parse_spec(queue["spec"])
        assert spec.worker.tasks_module == "tasks"


def test_full_example_reads_redis_from_a_secret_it_defines() -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "backgroundqueue-full.yaml").read_text()))
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    (queue,) = queues(EXAMPLES / "backgroundqueue-full.yaml")
    ref = queue["spec"]["redis"]["urlSecretRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    assert "url" not in queue["spec"]["redis"]


def test_example_tasks_module_registers_its_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    # a private registry: the example's task names (echo, sleep, ...) must not collide with
    # task modules other tests import into this process
    monkeypatch.setattr(importlib.import_module("bgq.task"), "_REGISTRY", {})
    spec = importlib.util.spec_from_file_location("tasks", EXAMPLES / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("echo", "add", "sleep", "digest"):
        assert lookup(name).fn is getattr(module, name).fn
    assert asyncio.run(module.add(2, 3)) == 5  # calling a task calls the function
    assert lookup("digest").cpu_bound
