"""Property tests of bgq_operator.scaling.decide (hypothesis)."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from bgq_operator.scaling import (
    BoundBy,
    Observation,
    ScalingMemory,
    ScalingPolicy,
    decide,
)

settings.register_profile("bgq", max_examples=300, deadline=None)
settings.load_profile("bgq")


@st.composite
def policies(draw: st.DrawFn) -> ScalingPolicy:
    lo = draw(st.integers(0, 5))
    hi = draw(st.integers(max(lo, 1), 40))
    return ScalingPolicy(
        min_replicas=lo,
        max_replicas=hi,
        jobs_per_pod=draw(st.integers(1, 20)),
        idle_headroom=draw(st.integers(0, 3)),
        scale_down_delay_s=draw(st.sampled_from([0.0, 1.0, 3.0, 30.0])),
        idle_before_zero_s=draw(st.sampled_from([0.0, 2.0, 5.0, 60.0])),
        on_redis_unavailable=draw(st.sampled_from(["Keep", "Min"])),
    )


counts = st.integers(0, 500)


@st.composite
def observations(draw: st.DrawFn, now: float = 100.0) -> Observation:
    current = draw(st.integers(0, 40))
    return Observation(
        now=now,
        current_replicas=current,
        backlog=draw(counts),
        in_flight=draw(counts),
        due=draw(st.integers(0, 50)),
        due_soon=draw(st.integers(0, 50)),
        ready_replicas=draw(st.integers(0, current)),
        busy_pods=draw(st.integers(0, current)),
        redis_ok=draw(st.booleans()),
    )


@st.composite
def memories(draw: st.DrawFn, now: float = 100.0) -> ScalingMemory:
    times = sorted(draw(st.lists(st.floats(now - 100, now), max_size=6)))
    needs = sorted(draw(st.lists(st.integers(0, 40), min_size=len(times),
                                 max_size=len(times), unique=True)), reverse=True)
    idle = draw(st.one_of(st.none(), st.floats(now - 100, now)))
    return ScalingMemory(window=tuple(zip(times, needs, strict=True)), idle_since=idle)


def need_of(policy: ScalingPolicy, obs: Observation) -> int:
    pods = math.ceil(obs.demand / policy.jobs_per_pod)
    if obs.demand:
        pods += policy.idle_headroom
    return min(max(pods, policy.min_replicas), policy.max_replicas)


@given(policies(), observations(), memories())
def test_within_bounds(policy: ScalingPolicy, obs: Observation, memory: ScalingMemory) -> None:
    d = decide(policy, obs, memory)
    assert policy.min_replicas <= d.desired <= policy.max_replicas, d.reason


@given(policies(), observations(), memories())
def test_paused_never_changes(
    policy: ScalingPolicy, obs: Observation, memory: ScalingMemory
) -> None:
    d = decide(replace(policy, paused=True), obs, memory)
    expected = (obs.current_replicas, False, BoundBy.AUTOSCALER_PAUSED)
    assert (d.desired, d.changed, d.bound_by) == expected


@given(policies(), observations(), memories())
def test_never_zero_with_work_anywhere(
    policy: ScalingPolicy, obs: Observation, memory: ScalingMemory
) -> None:
    d = decide(policy, obs, memory)
    if obs.redis_ok and (obs.in_flight or obs.backlog or obs.due):
        assert d.desired >= 1
    if obs.redis_ok and obs.work_anywhere and obs.current_replicas > 0:
        assert d.desired >= 1, d.reason


@given(policies(), observations(), memories())
def test_up_moves_are_one_step_to_the_need(
    policy: ScalingPolicy, obs: Observation, memory: ScalingMemory
) -> None:
    d = decide(policy, obs, memory)
    if d.desired > obs.current_replicas and obs.redis_ok:
        assert d.desired == need_of(policy, obs)
        # applying it and observing the same demand (pods not ready yet) adds nothing more
        again = decide(
            policy,
            replace(obs, now=obs.now + 1, current_replicas=d.desired, ready_replicas=0),
            d.memory,
        )
        assert again.desired == d.desired, again.reason


@given(policies(), observations(), memories())
def test_down_moves_never_remove_busy_pods(
    policy: ScalingPolicy, obs: Observation, memory: ScalingMemory
) -> None:
    d = decide(policy, obs, memory)
    if obs.redis_ok and d.desired < obs.current_replicas:
        assert d.desired >= min(obs.busy_pods, policy.max_replicas)


@given(policies(), observations(), memories(), st.integers(1, 300),
       st.sampled_from(["backlog", "in_flight", "due"]))
def test_monotone_in_demand(
    policy: ScalingPolicy, obs: Observation, memory: ScalingMemory, more: int, which: str
) -> None:
    low = decide(policy, obs, memory)
    high = decide(policy, replace(obs, **{which: getattr(obs, which) + more}), memory)
    assert high.desired >= low.desired, (low.reason, high.reason)


@given(policies(), observations(), memories())
def test_deterministic_and_memory_round_trips(
    policy: ScalingPolicy, obs: Observation, memory: ScalingMemory
) -> None:
    d1 = decide(policy, obs, memory)
    d2 = decide(policy, obs, ScalingMemory.from_dict(memory.to_dict()))
    assert d1 == d2
    assert ScalingMemory.from_dict(d1.memory.to_dict()) == d1.memory


@given(
    policies(),
    st.lists(st.tuples(st.floats(0.1, 10.0), counts, counts), min_size=1, max_size=40),
)
def test_down_moves_only_after_sustained_lower_need(
    policy: ScalingPolicy, steps: list[tuple[float, int, int]]
) -> None:
    """Over any run: a down-move at t means every need seen in (t - delay, t] was lower."""
    now, current, memory = 0.0, 0, ScalingMemory()
    history: list[tuple[float, int]] = []
    for dt, backlog, in_flight in steps:
        now += dt
        obs = Observation(now=now, current_replicas=current, backlog=backlog,
                          in_flight=in_flight, ready_replicas=current)
        d = decide(policy, obs, memory)
        history.append((now, need_of(policy, obs)))
        if d.desired < current:
            recent = [n for t, n in history if now - t < policy.scale_down_delay_s or t == now]
            assert max(recent) <= d.desired or d.bound_by == BoundBy.BUSY_PODS
            assert max(recent) < current
            # and the first observation had seen the pre-move count for a full delay too
            assert history[0][0] <= now - policy.scale_down_delay_s or current == 0
        memory, current = d.memory, d.desired
