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


@pytest.fixture(scope="module")
def live(sim: ModuleType) -> ModuleType:
    """bench/keda_live.py (imports the simulator as ``autoscale_sim``, loaded above)."""
    spec = importlib.util.spec_from_file_location("keda_live", ROOT / "bench/keda_live.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["keda_live"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("key", ["spike", "sawtooth", "long", "bursts"])
def test_live_traces_are_cut_from_the_simulated_ones(sim: ModuleType, live: ModuleType,
                                                     key: str) -> None:
    full = sim.TRACES[key](random.Random(f"7:{key}"))
    short = live.live_trace(key, 7)
    cut = live.SHORTEN[key]
    assert short.name == full.name
    assert 0 < len(short.jobs) < len(full.jobs)
    assert short.jobs[0][0] == pytest.approx(5.0)
    arrivals = [a for a, _ in short.jobs]
    assert arrivals == sorted(arrivals)
    assert max(d for _, d in short.jobs) <= max(d for _, d in full.jobs) * cut.time_scale + 1e-3
    # about 10 minutes of arrivals at most, and deterministic for a seed
    assert arrivals[-1] <= 600
    assert live.live_trace(key, 7) == short


def test_pod_timeline_from_watch_lines(live: ModuleType) -> None:
    lines = [(10.0, "ADDED|w1||"), (11.0, "MODIFIED|w1||False"), (13.0, "MODIFIED|w1||True"),
             (20.0, "ADDED|w2||"), (30.0, "MODIFIED|w1|2026-01-01T00:00:00Z|True"),
             (40.0, "DELETED|w1|2026-01-01T00:00:00Z|False")]
    tl = live.PodTimeline.parse(lines)
    assert tl.ready == {"w1": 13.0}
    assert tl.gone == {"w1": 40.0}
    assert tl.alive(15.0) == 1 and tl.alive(25.0) == 2 and tl.alive(45.0) == 1
    # w1 exists 10..40, w2 20..50 (still there at the end)
    assert tl.pod_seconds(0.0, 50.0) == pytest.approx(30.0 + 30.0)
    assert tl.pod_seconds(15.0, 35.0) == pytest.approx(20.0 + 15.0)


def test_key_limited_replicas_follow_the_concurrency_cap(
    sim: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-key concurrency bounds the work: bgq's cap saves pods without slowing any job."""
    trace = sim.trace_key_limited(random.Random("7:keys"))
    bgq, keda = sim.simulate(trace, args())
    assert bgq.interrupted == 0 and bgq.unfinished == 0 and keda.unfinished == 0
    assert keda.replica_seconds > 8 * bgq.replica_seconds
    assert bgq.max_wait <= keda.max_wait * 1.05  # the limit sets the pace, not the pods
    # the cap is what saves them: the same decision without the parked-jobs read
    monkeypatch.setattr(sim.Cluster, "startable", lambda self, t: None)
    uncapped, _ = sim.simulate(trace, args())
    assert uncapped.replica_seconds > 5 * bgq.replica_seconds
    assert uncapped.max_wait == pytest.approx(bgq.max_wait, rel=0.05)


def test_keda_streams_metric_sees_the_jobs_in_flight(sim: ModuleType) -> None:
    """streamLength on a bgq stream counts running jobs (entries are deleted at ack), so the
    HPA does not scale busy pods away as with the list scaler, whose popped jobs are invisible."""
    trace = sim.trace_long_trickle(random.Random("7:long"))
    _, listed = sim.simulate(trace, args())
    _, streamed = sim.simulate(trace, args(keda_metric="xlen"))
    assert listed.interrupted > 0
    assert streamed.interrupted == 0 and streamed.unfinished == 0
    with pytest.raises(ValueError, match="llen or xlen"):
        sim.KedaHpaController(max_replicas=1, list_length=1, rng=random.Random(1), metric="len")


def test_live_phases_pin_the_simulated_loops(sim: ModuleType, live: ModuleType) -> None:
    """The calibration takes KEDA's polling phase and the HPA's sync phase from the live run."""
    trace = live.live_trace("spike", 7)
    keda = live.Result(
        system="keda", replica_seconds=1.0, p50_wait=1.0, p95_wait=1.0, max_wait=1.0,
        interrupted=0, first_ready=25.0, idle_tail=None, replica_changes=3,
        direction_changes=1, peak=10, unfinished=0, start_delay=3.0,
        replica_timeline=[(0.0, 0), (22.0, 1), (31.5, 5), (46.5, 10), (400.0, 0)])
    assert live.poll_phases(trace, [keda]) == {"KEDA+HPA": pytest.approx(5.0 + 22.0)}
    assert live.hpa_phases(trace, [keda]) == {"KEDA+HPA": pytest.approx(5.0 + 31.5)}
    ctl = sim.KedaHpaController(max_replicas=10, list_length=10, rng=random.Random(1),
                                poll_at=27.0, sync_at=36.5)
    assert ctl.next_poll == 27.0 and ctl.next_sync == pytest.approx(36.5 % 15)
