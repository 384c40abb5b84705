"""scaling.decide with a paused queue, schedule pre-warm and a rate limit (tables + properties)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgq_operator.scaling import (
    BoundBy,
    InvalidScalingInputError,
    Observation,
    ScalingMemory,
    ScalingPolicy,
    decide,
    policy_from_spec,
    rate_cap,
)
from bgq_operator.spec import parse_spec

POLICY = ScalingPolicy(min_replicas=0, max_replicas=20, jobs_per_pod=10, scale_down_delay_s=30)


@pytest.mark.parametrize(
    ("current", "busy", "redis_ok", "desired"),
    [(5, 0, True, 0), (5, 2, True, 2), (0, 0, True, 0), (3, 9, True, 3), (4, 0, False, 4)],
)
def test_queue_paused_goes_to_the_busy_pods(
    current: int, busy: int, redis_ok: bool, desired: int
) -> None:
    policy = replace(POLICY, min_replicas=2, queue_paused=True)
    obs = Observation(
        now=100, current_replicas=current, backlog=1000, busy_pods=busy, redis_ok=redis_ok
    )
    d = decide(policy, obs, ScalingMemory())
    assert (d.desired, d.bound_by) == (desired, BoundBy.PAUSED)
    assert "paused" in d.reason


def test_autoscaler_pause_wins_over_queue_pause() -> None:
    policy = replace(POLICY, paused=True, queue_paused=True)
    d = decide(policy, Observation(now=1, current_replicas=4), ScalingMemory())
    assert (d.desired, d.bound_by) == (4, BoundBy.AUTOSCALER_PAUSED)


def test_pre_warm_starts_one_pod_and_blocks_zero() -> None:
    d = decide(POLICY, Observation(now=1, current_replicas=0, warm=True), ScalingMemory())
    assert (d.desired, d.bound_by) == (1, BoundBy.SCHEDULE_WARM)
    # while warm, the idle clock does not run: the pod stays
    d2 = decide(POLICY, Observation(now=500, current_replicas=1, warm=True), d.memory)
    assert d2.desired == 1
    # after the tick (warm over, no work): back to zero after idleSecondsBeforeZero
    d3 = decide(POLICY, Observation(now=600, current_replicas=1), d2.memory)
    assert d3.desired == 1 and d3.bound_by is BoundBy.IDLE_BEFORE_ZERO
    d4 = decide(POLICY, Observation(now=700, current_replicas=1), d3.memory)
    assert d4.desired == 0


def test_pre_warm_respects_demand_and_min() -> None:
    policy = replace(POLICY, min_replicas=3)
    d = decide(policy, Observation(now=1, current_replicas=0, warm=True), ScalingMemory())
    assert d.desired == 3
    d = decide(
        POLICY, Observation(now=1, current_replicas=0, backlog=45, warm=True), ScalingMemory()
    )
    assert (d.desired, d.bound_by) == (5, BoundBy.DEMAND)


@pytest.mark.parametrize(
    ("rate", "run_time", "jobs_per_pod", "headroom", "cap"),
    [
        (10.0, 2.0, 10, 0, 2),  # 20 jobs busy at once / 10 per pod
        (10.0, 2.0, 10, 1, 3),  # + headroom
        (1.0, 0.1, 10, 0, 1),  # never below one pod
        (100.0, 0.5, 4, 0, 13),  # ceil(50 / 4)
        (5.0, None, 10, 0, 1),  # run time not observed: in flight (0) + 1 s of starts
    ],
)
def test_rate_cap_maths(
    rate: float, run_time: float | None, jobs_per_pod: int, headroom: int, cap: int | None
) -> None:
    policy = replace(POLICY, rate_per_s=rate, jobs_per_pod=jobs_per_pod, idle_headroom=headroom)
    assert rate_cap(policy, run_time) == cap


def test_rate_cap_before_any_run_time_grows_with_in_flight() -> None:
    policy = replace(POLICY, rate_per_s=20.0)
    assert rate_cap(policy, None, 0) == 2
    assert rate_cap(policy, None, 40) == 6  # (40 + 20) / 10
    assert rate_cap(replace(POLICY), None, 40) is None  # no limit, no cap
    obs = Observation(now=1, current_replicas=0, backlog=5000, in_flight=40)
    d = decide(policy, obs, ScalingMemory())
    assert (d.desired, d.bound_by) == (6, BoundBy.RATE_LIMIT)
    assert "run time not observed yet" in d.reason


def test_rate_limit_bounds_a_big_backlog_with_figures() -> None:
    policy = replace(POLICY, rate_per_s=10.0)
    obs = Observation(now=1, current_replicas=0, backlog=5000, run_time_s=2.0)
    d = decide(policy, obs, ScalingMemory())
    assert (d.desired, d.bound_by) == (2, BoundBy.RATE_LIMIT)
    assert "10 jobs/s x 2s run time / 10 per pod" in d.reason
    # without the limit the same backlog goes to maxReplicas
    assert decide(POLICY, obs, ScalingMemory()).desired == 20


def test_policy_from_spec_reads_limits_and_paused() -> None:
    spec = parse_spec(
        {
            "redis": {"url": "redis://r"},
            "worker": {"image": "i", "tasksModule": "m"},
            "paused": True,
            "limits": {"rate": {"jobs": 30, "perSeconds": 60}},
        }
    )
    policy = policy_from_spec(spec)
    assert policy.queue_paused and policy.rate_per_s == 0.5 and not policy.paused


def test_bad_inputs() -> None:
    with pytest.raises(InvalidScalingInputError, match="rate_per_s"):
        replace(POLICY, rate_per_s=0.0)
    with pytest.raises(InvalidScalingInputError, match="run_time_s"):
        Observation(now=1, current_replicas=0, run_time_s=float("nan"))


@settings(deadline=None, max_examples=300)  # no deadline: the machine is shared and busy
@given(
    current=st.integers(0, 30),
    backlog=st.integers(0, 5000),
    in_flight=st.integers(0, 500),
    busy=st.integers(0, 30),
    rate=st.floats(0.01, 1000),
    run_time=st.floats(0, 100),
    headroom=st.integers(0, 3),
)
def test_rate_limited_scale_up_never_exceeds_the_cap(
    current: int, backlog: int, in_flight: int, busy: int, rate: float, run_time: float,
    headroom: int,
) -> None:  # fmt: skip
    policy = replace(POLICY, rate_per_s=rate, idle_headroom=headroom)
    obs = Observation(
        now=1, current_replicas=current, backlog=backlog, in_flight=in_flight,
        busy_pods=busy, run_time_s=run_time,
    )  # fmt: skip
    d = decide(policy, obs, ScalingMemory())
    cap = rate_cap(policy, run_time, in_flight)
    assert cap is not None
    if d.desired > current:  # any scale-up stays within what the limit lets through
        assert d.desired <= max(cap, policy.min_replicas)


@settings(deadline=None, max_examples=300)
@given(current=st.integers(0, 30), busy=st.integers(0, 30), backlog=st.integers(0, 1000))
def test_queue_paused_never_scales_up_nor_below_busy(current: int, busy: int, backlog: int) -> None:
    policy = replace(POLICY, queue_paused=True, min_replicas=3)
    obs = Observation(now=1, current_replicas=current, backlog=backlog, busy_pods=busy)
    d = decide(policy, obs, ScalingMemory())
    assert d.desired <= current
    assert d.desired == min(busy, current)
