"""scaling.decide with per-key concurrency limits, and the limit figures (tables + properties)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgq_operator.autoscaler import limit_message
from bgq_operator.queuekeys import ParkedSummary, startable
from bgq_operator.scaling import (
    BoundBy,
    InvalidScalingInputError,
    Observation,
    ScalingMemory,
    ScalingPolicy,
    decide,
    key_cap,
    limit_figures,
    policy_from_spec,
)
from bgq_operator.spec import parse_spec

POLICY = ScalingPolicy(min_replicas=0, max_replicas=20, jobs_per_pod=1, scale_down_delay_s=30)


@pytest.mark.parametrize(
    ("in_flight", "startable_", "jobs_per_pod", "headroom", "cap"),
    [
        (2, 0, 1, 0, 2),  # one hot tenant at concurrency 2: its 2 running jobs, nothing more
        (2, 0, 1, 1, 3),  # + headroom
        (6, 4, 2, 0, 5),  # 3 tenants x 2 + 4 more that may start, 2 per pod
        (0, 0, 4, 0, 1),  # never below one pod while work waits
        (5, 0, 10, 0, 1),
        (0, None, 1, 0, None),  # not every waiting job is behind the keys: no cap
    ],
)
def test_key_cap_maths(
    in_flight: int, startable_: int | None, jobs_per_pod: int, headroom: int, cap: int | None
) -> None:
    policy = replace(POLICY, jobs_per_pod=jobs_per_pod, idle_headroom=headroom)
    obs = Observation(now=1, current_replicas=0, in_flight=in_flight, startable=startable_)
    assert key_cap(policy, obs) == cap


def test_hot_key_bounds_the_replicas_with_figures() -> None:
    # 48 jobs of one tenant parked behind concurrency 2, 2 running, 1 job per pod
    obs = Observation(now=1, current_replicas=0, backlog=48, in_flight=2, startable=0)
    d = decide(POLICY, obs, ScalingMemory())
    assert (d.desired, d.bound_by) == (2, BoundBy.CONCURRENCY_LIMIT)
    assert "per-key concurrency limits" in d.reason and "2 running + 0 may start" in d.reason
    assert d.extra["limit"] == {
        "running": 2, "startable": 0, "concurrencyCap": 2, "jobsPerPod": 1, "headroom": 0,
    }  # fmt: skip
    # the same demand with unread entries (keys unknown) is not capped
    unknown = replace(obs, startable=None)
    d = decide(POLICY, unknown, ScalingMemory())
    assert (d.desired, d.bound_by) == (20, BoundBy.MAX)
    assert "limit" not in d.extra


def test_free_slots_raise_the_cap() -> None:
    # 10 tenants at concurrency 3: 12 running, 18 more may start now, 4 jobs per pod
    policy = replace(POLICY, jobs_per_pod=4)
    obs = Observation(now=1, current_replicas=2, backlog=200, in_flight=12, startable=18)
    d = decide(policy, obs, ScalingMemory())
    assert (d.desired, d.bound_by) == (math.ceil(30 / 4), BoundBy.CONCURRENCY_LIMIT)


def test_min_replicas_and_a_lower_rate_cap_win() -> None:
    obs = Observation(now=1, current_replicas=0, backlog=48, in_flight=2, startable=0)
    d = decide(replace(POLICY, min_replicas=5), obs, ScalingMemory())
    assert (d.desired, d.bound_by) == (5, BoundBy.MIN)
    # a rate limit that lets even fewer through binds instead, and both figures are shown
    rated = replace(POLICY, rate_per_s=0.5, rate_jobs=30, rate_period_s=60.0)
    d = decide(rated, replace(obs, run_time_s=2.0), ScalingMemory())
    assert (d.desired, d.bound_by) == (1, BoundBy.RATE_LIMIT)
    assert d.extra["limit"] == {
        "rate": 30, "perSeconds": 60.0, "jobsPerSecond": 0.5, "runSeconds": 2.0, "cap": 1,
        "running": 2, "startable": 0, "concurrencyCap": 2, "jobsPerPod": 1, "headroom": 0,
    }  # fmt: skip


def test_rate_figures_from_the_spec() -> None:
    spec = parse_spec(
        {
            "redis": {"url": "redis://r"},
            "worker": {"image": "i", "tasksModule": "m", "concurrency": 2},
            "limits": {"rate": {"jobs": 10, "perSeconds": 2}},
        }
    )
    policy = policy_from_spec(spec)
    obs = Observation(now=1, current_replicas=0, backlog=500, run_time_s=1.5)
    figures = limit_figures(policy, obs)
    assert figures == {
        "rate": 10, "perSeconds": 2.0, "jobsPerSecond": 5.0, "runSeconds": 1.5,
        "cap": 4, "jobsPerPod": 2, "headroom": 0,
    }  # fmt: skip  # ceil(5 jobs/s x 1.5 s / 2 per pod) = 4
    d = decide(policy, obs, ScalingMemory())
    assert (d.desired, d.bound_by, d.extra["limit"]) == (4, BoundBy.RATE_LIMIT, figures)
    assert limit_figures(POLICY, obs) == {}  # no limits, no figures
    msg = limit_message("rate-limit", figures, 4)
    assert msg.startswith("replicas capped at 4 by spec.limits.rate: rate=10 perSeconds=2.0")
    assert "runSeconds=1.5 cap=4" in msg


def test_negative_startable_is_refused() -> None:
    with pytest.raises(InvalidScalingInputError, match="startable=-1"):
        Observation(now=1, current_replicas=0, startable=-1)


@pytest.mark.parametrize(
    ("summary", "unread", "due", "expected"),
    [
        (ParkedSummary(2, 48, 0, 0, False), 0, 0, 0),
        (ParkedSummary(3, 40, 4, 6, False), 0, 0, 10),  # free + unbounded (rate-only keys)
        (ParkedSummary(2, 48, 0, 0, False), 1, 0, None),  # unread entries: keys unknown
        (ParkedSummary(2, 48, 0, 0, False), 0, 3, None),  # due delayed jobs: keys unknown
        (ParkedSummary(500, 900, 0, 0, True), 0, 0, None),  # more lists than looked at
        (None, 0, 0, None),  # no key limits
    ],
)
def test_startable_only_when_all_waiting_work_is_parked(
    summary: ParkedSummary | None, unread: int, due: int, expected: int | None
) -> None:
    assert startable(summary, unread, due) == expected


def test_parked_summary_reply() -> None:
    assert ParkedSummary.from_reply([2, 48, 1, 0, 0]) == ParkedSummary(2, 48, 1, 0, False)
    assert ParkedSummary.from_reply([1, 1, 0, 0, 1]) == ParkedSummary(1, 1, 0, 0, True)
    assert ParkedSummary.from_reply(ValueError("NOSCRIPT")) is None
    assert ParkedSummary.from_reply([1, 2]) is None
    assert ParkedSummary.from_reply(["x", 1, 1, 1, 1]) is None


@st.composite
def limited(draw: st.DrawFn) -> tuple[ScalingPolicy, Observation]:
    lo = draw(st.integers(0, 4))
    policy = ScalingPolicy(
        min_replicas=lo,
        max_replicas=draw(st.integers(max(lo, 1), 40)),
        jobs_per_pod=draw(st.integers(1, 20)),
        idle_headroom=draw(st.integers(0, 3)),
        scale_down_delay_s=draw(st.sampled_from([0.0, 3.0, 30.0])),
        idle_before_zero_s=draw(st.sampled_from([0.0, 5.0, 60.0])),
        rate_per_s=draw(st.one_of(st.none(), st.floats(0.01, 1000))),
    )
    current = draw(st.integers(0, 40))
    obs = Observation(
        now=100.0,
        current_replicas=current,
        backlog=draw(st.integers(0, 5000)),
        in_flight=draw(st.integers(0, 500)),
        ready_replicas=draw(st.integers(0, current)),
        busy_pods=draw(st.integers(0, current)),
        startable=draw(st.integers(0, 500)),
        run_time_s=draw(st.one_of(st.none(), st.floats(0, 100))),
    )
    return policy, obs


@settings(deadline=None, max_examples=400)
@given(limited(), st.booleans())
def test_concurrency_limited_replicas_never_exceed_the_cap(
    case: tuple[ScalingPolicy, Observation], fresh: bool
) -> None:
    policy, obs = case
    memory = ScalingMemory() if fresh else ScalingMemory(window=((90.0, 0),), idle_since=None)
    d = decide(policy, obs, memory)
    cap = key_cap(policy, obs)
    assert cap is not None
    bound = max(cap, policy.min_replicas)
    assert d.need is not None and d.need <= bound  # what demand alone asks for is capped
    if d.desired > obs.current_replicas:  # and so is every scale-up
        assert d.desired <= bound, d.reason
    # the cap always leaves a slot for every running job
    assert cap * policy.jobs_per_pod >= obs.in_flight
    assert policy.min_replicas <= d.desired <= policy.max_replicas


@settings(deadline=None, max_examples=300)
@given(limited())
def test_the_cap_only_ever_lowers_the_need(case: tuple[ScalingPolicy, Observation]) -> None:
    policy, obs = case
    capped = decide(policy, obs, ScalingMemory())
    free = decide(policy, replace(obs, startable=None), ScalingMemory())
    assert capped.need is not None and free.need is not None
    assert capped.need <= free.need
    if capped.bound_by is BoundBy.CONCURRENCY_LIMIT:
        cap = key_cap(policy, obs)
        assert cap is not None and capped.need == cap <= free.need


def test_limit_figures_are_typed_status_fields() -> None:
    """Every figure the decision reports is a field of status.scaling.limit (the CRD keeps it)."""
    from bgq_operator.spec import ScalingLimitStatus, ScalingStatus

    rated = replace(POLICY, rate_per_s=0.5, rate_jobs=30, rate_period_s=60.0)
    obs = Observation(
        now=1, current_replicas=0, backlog=48, in_flight=2, startable=0, run_time_s=2.0
    )
    figures = decide(rated, obs, ScalingMemory()).extra["limit"]
    fields = {f.alias or name for name, f in ScalingLimitStatus.model_fields.items()}
    assert set(figures) == fields
    parsed = ScalingStatus.model_validate({"boundBy": "rate-limit", "limit": figures})
    assert parsed.limit is not None
    assert parsed.limit.model_dump(by_alias=True, exclude_none=True) == figures


def test_run_time_estimate_is_littles_law_over_the_window() -> None:
    from bgq_operator.queuekeys import RATE_WINDOW_S, RunTimeEstimate

    est = RunTimeEstimate()
    # 2 jobs busy on average, 4 completions per second: 0.5 s per job
    got = [est.add(float(t), 4 * t, 2) for t in range(0, 13)]
    assert got[: int(RATE_WINDOW_S)] == [None] * int(RATE_WINDOW_S)  # not 10 s of data yet
    assert got[-1] == pytest.approx(0.5)
    # the queue goes idle: completions stop, busy 0; the estimate stays what jobs took
    idle = [est.add(float(t), 48, 0) for t in range(13, 20)]
    assert all(v is not None and 0.3 < v < 1.0 for v in idle), idle
    # a window with no busy job at all gives no estimate (not 0 s)
    fresh = RunTimeEstimate()
    assert [fresh.add(float(t), t, 0) for t in range(0, 15)][-1] is None
    # counters reset (Redis flushed): start again
    assert est.add(20.0, 3, 1) is None


def test_measured_limit_figures_alone_do_not_cost_a_status_write() -> None:
    from bgq_operator.reconcile import _essential

    limit: dict[str, Any] = {
        "rate": 4, "perSeconds": 1.0, "runSeconds": 0.25, "cap": 1, "running": 3, "startable": 0,
    }  # fmt: skip

    def status(**figures: Any) -> dict[str, Any]:
        return {"scaling": {"boundBy": "rate-limit", "desired": 2, "limit": {**limit, **figures}}}

    base = status()
    moved = status(runSeconds=0.31, running=2, startable=4)
    assert _essential(base) == _essential(moved)  # figures move every tick: refreshed later
    capped = status(cap=2)
    assert _essential(base) != _essential(capped)  # a new cap is written at once
