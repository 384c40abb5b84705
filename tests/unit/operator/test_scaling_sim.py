"""The autoscaling benchmark's claims, as a fast regression test (bench/autoscale_sim.py)."""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def sim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("autoscale_sim", ROOT / "bench/autoscale_sim.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["autoscale_sim"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def args(**over: object) -> argparse.Namespace:
    base: dict[str, object] = {"seed": 7, "dt": 0.1, "concurrency": 10, "max_replicas": 60,
                               "start_delay": 2.0, "grace": 30.0, "tuned": False}
    base.update(over)
    return argparse.Namespace(**base)


def test_spike_one_step_and_faster_than_keda(sim: ModuleType) -> None:
    trace = sim.trace_spike(random.Random("7:spike"))
    bgq, keda = sim.simulate(trace, args())
    assert bgq.peak == 50  # 500 jobs / 10 per pod, requested at once
    assert bgq.direction_changes == 1
    assert bgq.interrupted == 0 and bgq.unfinished == 0
    assert bgq.p95_wait <= 3.5  # <= 1 s detection + 2 s pod start
    assert keda.p95_wait > 5 * bgq.p95_wait
    assert keda.replica_seconds > bgq.replica_seconds


def test_long_jobs_never_interrupted_by_bgq(sim: ModuleType) -> None:
    trace = sim.trace_long_trickle(random.Random("7:long"))
    bgq, keda = sim.simulate(trace, args())
    assert bgq.interrupted == 0 and bgq.unfinished == 0
    assert keda.interrupted > 0  # LLEN cannot see popped jobs: scale-in kills busy workers
    assert bgq.idle_tail is not None and bgq.idle_tail < 70  # zero ~60 s after the last job


def test_deterministic(sim: ModuleType) -> None:
    trace = sim.trace_sawtooth(random.Random("3:sawtooth"))
    assert sim.simulate(trace, args(seed=3)) == sim.simulate(trace, args(seed=3))
    assert "| sawtooth | bgq |" in sim.table([(trace, sim.simulate(trace, args(seed=3)))])
