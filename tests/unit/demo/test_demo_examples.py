"""examples/demo: the demo queue is a valid spec naming the demo tasks module, the module
registers the tasks the producer enqueues (one of them CPU-bound), and the producer's seeded mix
is what the README promises (0.1-5 s sleeps, some failing once, some CPU-bound, half via HTTP)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from bgq.task import lookup
from bgq_operator.spec import parse_spec

DEMO = Path(__file__).resolve().parents[3] / "examples" / "demo"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, DEMO / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_demo_queue_is_a_valid_spec_with_scale_to_zero() -> None:
    queue = yaml.safe_load((DEMO / "queue.yaml").read_text())
    spec = parse_spec(queue["spec"])
    assert spec.worker.tasks_module == "demo_tasks"
    assert spec.worker.image_pull_policy == "Never"
    assert spec.scaling.min_replicas == 0
    # the drain scenario's longest job (20 s) fits in the drain budget
    assert spec.drain_seconds > 20


def test_demo_tasks_register_what_the_producer_enqueues(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.import_module("bgq.task"), "_REGISTRY", {})
    monkeypatch.delitem(sys.modules, "demo_tasks", raising=False)
    load("demo_tasks")
    burst = load("burst")
    tasks = {j["task"] for j in burst.plan("r1", 400, "burst")} | {
        j["task"] for j in burst.plan("r1", 2, "drain")}
    for name in tasks:
        assert lookup(name).task_name == name
    assert lookup("render_report").cpu_bound
    assert not lookup("send_email").cpu_bound


def test_the_burst_mix() -> None:
    burst = load("burst")
    jobs = burst.plan("r42", 400, "burst")
    assert jobs == burst.plan("r42", 400, "burst")  # seeded: a run id is always the same jobs
    assert len({j["job_id"] for j in jobs}) == 400 and jobs[0]["job_id"] == "r42-0000"
    sleeps = [j["args"][1] for j in jobs if j["task"] != "render_report"]
    assert min(sleeps) >= 0.1 and max(sleeps) <= 5.0
    assert max(sleeps) > 3.0  # the long tail is there
    flaky = [j for j in jobs if j["task"] == "sync_inventory" and j["args"][2]]
    assert len(flaky) == 40  # one in ten, whatever the run id: every run retries some
    assert sum(j["task"] == "render_report" for j in jobs) == 40
    drain = burst.plan("r42", 24, "drain")
    assert {j["task"] for j in drain} == {"export_archive"}
    assert all(12 <= j["args"][1] <= 20 for j in drain)
