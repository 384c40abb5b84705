"""Table tests of the autoscaler's pure decision function (bgq_operator.scaling)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, cast

import pytest

from bgq_operator.scaling import (
    BoundBy,
    Decision,
    InvalidScalingInputError,
    Observation,
    ScalingMemory,
    ScalingPolicy,
    decide,
)

POLICY = ScalingPolicy(
    min_replicas=0,
    max_replicas=20,
    jobs_per_pod=10,
    scale_down_delay_s=30,
    idle_before_zero_s=60,
)


def run(
    policy: ScalingPolicy,
    steps: list[tuple[float, dict[str, int]]],
    *,
    current: int = 0,
    memory: ScalingMemory | None = None,
) -> list[Decision]:
    """Feed observations in order, applying each decision like the runtime would."""
    memory = memory or ScalingMemory()
    out: list[Decision] = []
    for now, fields in steps:
        # cast: mypy checks each int against every field, redis_ok: bool included
        obs = Observation(now=now, current_replicas=current, ready_replicas=current,
                          **cast(dict[str, Any], fields))
        decision = decide(policy, obs, memory)
        out.append(decision)
        memory, current = decision.memory, decision.desired
    return out


@pytest.mark.parametrize(
    ("policy", "current", "fields", "desired", "bound"),
    [
        # 0 -> N in one step, from demand alone.
        (POLICY, 0, {"backlog": 95}, 10, BoundBy.DEMAND),
        (POLICY, 0, {"backlog": 1}, 1, BoundBy.DEMAND),
        # in flight and due delayed jobs are demand too (KEDA's LLEN sees neither).
        (POLICY, 0, {"backlog": 5, "in_flight": 10, "due": 6}, 3, BoundBy.DEMAND),
        # due-soon (not yet due) delayed jobs are not demand.
        (POLICY, 0, {"due_soon": 50}, 0, BoundBy.DEMAND),
        (POLICY, 0, {"backlog": 10_000}, 20, BoundBy.MAX),
        (replace(POLICY, min_replicas=2), 0, {}, 2, BoundBy.MIN),
        (replace(POLICY, min_replicas=2), 0, {"backlog": 5}, 2, BoundBy.MIN),
        (replace(POLICY, idle_headroom=2), 0, {"backlog": 5}, 3, BoundBy.HEADROOM),
        # headroom only while there is demand
        (replace(POLICY, idle_headroom=2), 0, {}, 0, BoundBy.DEMAND),
        (replace(POLICY, idle_headroom=50), 0, {"backlog": 5}, 20, BoundBy.MAX),
        (replace(POLICY, paused=True), 3, {"backlog": 1000}, 3, BoundBy.AUTOSCALER_PAUSED),
        (replace(POLICY, paused=True), 25, {}, 25, BoundBy.AUTOSCALER_PAUSED),
        (POLICY, 4, {"redis_ok": 0}, 4, BoundBy.REDIS_UNAVAILABLE),
        (replace(POLICY, min_replicas=5), 4, {"redis_ok": 0}, 5, BoundBy.REDIS_UNAVAILABLE),
        (replace(POLICY, on_redis_unavailable="Min", min_replicas=6), 2, {"redis_ok": 0}, 6,
         BoundBy.REDIS_UNAVAILABLE),
        # 3 -> 40 style jump: straight to the target.
        (replace(POLICY, max_replicas=100), 3, {"backlog": 400}, 40, BoundBy.DEMAND),
    ],
)
def test_single_decision(
    policy: ScalingPolicy, current: int, fields: dict[str, int], desired: int, bound: BoundBy
) -> None:
    obs_fields: dict[str, Any] = {k: v for k, v in fields.items() if k != "redis_ok"}
    obs = Observation(
        now=1000.0, current_replicas=current, redis_ok=bool(fields.get("redis_ok", 1)),
        **obs_fields,
    )
    decision = decide(policy, obs, ScalingMemory())
    assert (decision.desired, decision.bound_by) == (desired, bound), decision.reason
    assert decision.changed == (desired != current)
    assert decision.reason


def test_starting_pods_count_as_capacity_no_runaway() -> None:
    """Pods requested but not ready: repeated ticks with nobody ready never add more pods."""
    memory, current = ScalingMemory(), 0
    desired_seen = []
    for t in range(30):
        obs = Observation(now=float(t), current_replicas=current, ready_replicas=0, backlog=50)
        d = decide(POLICY, obs, memory)
        memory, current = d.memory, d.desired
        desired_seen.append(d.desired)
    assert desired_seen == [5] * 30
    assert "0 of 5 pods ready" in d.reason


def test_scale_down_waits_for_sustained_lower_demand_then_goes_to_window_max() -> None:
    steps: list[tuple[float, dict[str, int]]] = [
        (0, {"backlog": 100}),  # -> 10
        (10, {"backlog": 60}),  # need 6: hold (delay)
        (20, {"backlog": 30}),  # need 3: hold
        (35, {"backlog": 30}),  # entry at 10 (need 6) still within 30 s, t=0 (10) expired
        (41, {"backlog": 30}),  # 10 s entry expired -> max of window = 3
    ]
    ds = run(POLICY, steps)
    assert [d.desired for d in ds] == [10, 10, 10, 6, 3]
    assert [d.bound_by for d in ds] == [
        BoundBy.DEMAND,
        BoundBy.SCALE_DOWN_DELAY,
        BoundBy.SCALE_DOWN_DELAY,
        BoundBy.SCALE_DOWN_DELAY,
        BoundBy.DEMAND,
    ]
    assert "30s" in ds[1].reason
    assert ds[1].extra["secondsLeft"] == pytest.approx(20.0)


def test_a_brief_dip_does_not_scale_down() -> None:
    steps: list[tuple[float, dict[str, int]]] = [
        (0, {"backlog": 80}),
        (5, {"backlog": 0, "in_flight": 10}),
        (20, {"backlog": 80}),  # back up before the delay: no change at any point
        (45, {"backlog": 0, "in_flight": 80}),
    ]
    ds = run(POLICY, steps)
    assert [d.desired for d in ds] == [8, 8, 8, 8]
    assert not any(d.changed for d in ds[1:])


def test_scale_to_zero_only_after_idle_time_with_no_work_anywhere() -> None:
    policy = replace(POLICY, scale_down_delay_s=3, idle_before_zero_s=5)
    steps: list[tuple[float, dict[str, int]]] = [
        (0, {"backlog": 30}),  # 3
        (1, {"in_flight": 1}),  # need 1: hold (delay)
        (4, {"in_flight": 1}),  # delay passed: 1 (demand)
        (10, {}),  # first seen idle at 10: idle clock starts; one pod stays
        (14, {}),  # idle 4 s < 5
        (15, {"due_soon": 1}),  # a delayed job due within the idle window: still work
        (19, {}),  # idle since 19
        (24, {}),  # idle 5 s: zero
    ]
    ds = run(policy, steps)
    assert [d.desired for d in ds] == [3, 3, 1, 1, 1, 1, 1, 0]
    assert ds[3].bound_by == BoundBy.IDLE_BEFORE_ZERO
    assert ds[5].bound_by == BoundBy.IDLE_BEFORE_ZERO
    assert "no work anywhere" in ds[6].reason
    assert ds[7].bound_by == BoundBy.DEMAND


def test_zero_needs_both_delays_not_their_sum() -> None:
    policy = replace(POLICY, scale_down_delay_s=10, idle_before_zero_s=4)
    ds = run(policy, [(0, {"backlog": 5}), (1, {}), (5, {}), (10.5, {}), (11, {})])
    # idle since 1 (5 s at t=6) but the window still holds the need at t=0 until t=10
    assert [d.desired for d in ds] == [1, 1, 1, 0, 0]


def test_never_removes_busy_pods() -> None:
    # 4 pods; demand 3 in flight on 3 different pods with 10 jobs per pod -> need 1
    policy = replace(POLICY, scale_down_delay_s=0)
    d = decide(
        policy,
        Observation(now=0, current_replicas=4, in_flight=3, busy_pods=3),
        ScalingMemory(window=((0.0, 1),)),
    )
    assert (d.desired, d.bound_by) == (3, BoundBy.BUSY_PODS)
    assert "running jobs" in d.reason


def test_fresh_memory_holds_current_replicas_for_a_full_delay() -> None:
    """An operator restart without stored memory must not scale down at once."""
    ds = run(POLICY, [(100, {}), (129, {}), (130, {})], current=8)
    assert [d.desired for d in ds] == [8, 8, 1]
    assert ds[2].bound_by == BoundBy.IDLE_BEFORE_ZERO


def test_redis_outage_restarts_the_clocks() -> None:
    policy = replace(POLICY, scale_down_delay_s=10, idle_before_zero_s=20)
    steps: list[tuple[float, dict[str, int]]] = [
        (0, {"backlog": 50}),  # 5
        (100, {}),  # first seen idle at 100: 5 -> 1, one pod kept for the idle time
    ]
    ds = run(policy, steps)
    assert [d.desired for d in ds] == [5, 1]
    memory = ds[-1].memory
    down = decide(policy, Observation(now=200, current_replicas=1, redis_ok=False), memory)
    assert (down.desired, down.bound_by) == (1, BoundBy.REDIS_UNAVAILABLE)
    back = decide(policy, Observation(now=205, current_replicas=1), down.memory)
    # Redis back and empty, but the outage counted as possible work: idle clock restarts at 205.
    # (the outage also fed the down window: held by the delay first)
    assert (back.desired, back.bound_by) == (1, BoundBy.SCALE_DOWN_DELAY)
    later = decide(policy, Observation(now=221, current_replicas=1), back.memory)
    assert (later.desired, later.bound_by) == (1, BoundBy.IDLE_BEFORE_ZERO)
    later = decide(policy, Observation(now=225, current_replicas=1), later.memory)
    assert later.desired == 0


def test_redis_min_goes_to_min_after_the_delay() -> None:
    policy = replace(POLICY, on_redis_unavailable="Min", min_replicas=1, scale_down_delay_s=10)
    ds = []
    memory, current = ScalingMemory(((0.0, 6),), None, None), 6
    for t in (1, 5, 11):
        d = decide(policy, Observation(now=t, current_replicas=current, redis_ok=False), memory)
        memory, current = d.memory, d.desired
        ds.append(d)
    assert [d.desired for d in ds] == [6, 6, 1]
    assert all(d.bound_by == BoundBy.REDIS_UNAVAILABLE for d in ds)
    assert ds[0].demand is None


def test_paused_then_unpaused_waits_a_full_delay() -> None:
    paused = replace(POLICY, paused=True)
    d = decide(paused, Observation(now=0, current_replicas=7), ScalingMemory())
    d = decide(paused, Observation(now=50, current_replicas=7), d.memory)
    assert (d.desired, d.bound_by) == (7, BoundBy.AUTOSCALER_PAUSED)
    d = decide(POLICY, Observation(now=60, current_replicas=7), d.memory)
    assert (d.desired, d.bound_by) == (7, BoundBy.SCALE_DOWN_DELAY)


def test_lowered_max_applies_at_once() -> None:
    policy = replace(POLICY, max_replicas=4, scale_down_delay_s=5)
    ds = run(policy, [(0, {"backlog": 200}), (6, {"backlog": 200})], current=10,
             memory=ScalingMemory(window=((0.0, 10),)))
    assert [d.desired for d in ds] == [4, 4]
    assert ds[0].bound_by == BoundBy.MAX


def test_memory_round_trips_through_json() -> None:
    ds = run(POLICY, [(0, {"backlog": 100}), (10, {"backlog": 40}), (20, {"backlog": 20})])
    memory = ds[-1].memory
    text = json.dumps(memory.to_dict())
    again = ScalingMemory.from_dict(json.loads(text))
    assert again == memory
    obs = Observation(now=31, current_replicas=10, backlog=20)
    assert decide(POLICY, obs, again) == decide(POLICY, obs, memory)
    assert ScalingMemory.from_dict(None) == ScalingMemory()
    assert ScalingMemory.from_dict({}) == ScalingMemory()


def test_window_stays_small() -> None:
    steps = [(float(t), {"backlog": (t * 37) % 200}) for t in range(2000)]
    ds = run(POLICY, steps)
    assert max(len(d.memory.window) for d in ds) <= POLICY.max_replicas + 1


def test_clock_moving_back_only_holds_longer() -> None:
    memory = ScalingMemory(window=((1000.0, 9),), idle_since=1000.0)
    d = decide(POLICY, Observation(now=900, current_replicas=9), memory)
    assert (d.desired, d.bound_by) == (9, BoundBy.SCALE_DOWN_DELAY)
    assert all(t <= 900 for t, _ in d.memory.window)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_replicas": 5, "max_replicas": 2}, "min_replicas=5 must be <= max_replicas=2"),
        ({"jobs_per_pod": 0}, "jobs_per_pod=0 must be >= 1"),
        ({"min_replicas": -1}, "min_replicas=-1 must be >= 0"),
        ({"scale_down_delay_s": -1}, "scale_down_delay_s=-1"),
        ({"idle_before_zero_s": float("nan")}, "idle_before_zero_s=nan"),
        ({"on_redis_unavailable": "Drop"}, "must be 'Keep' or 'Min'"),
    ],
)
def test_bad_policy_is_explained(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidScalingInputError, match=message.replace("(", r"\(")):
        ScalingPolicy(**kwargs)  # type: ignore[arg-type]


def test_bad_observation_and_memory_are_explained() -> None:
    with pytest.raises(InvalidScalingInputError, match="backlog=-1"):
        Observation(now=0, current_replicas=0, backlog=-1)
    with pytest.raises(InvalidScalingInputError, match="finite"):
        Observation(now=float("inf"), current_replicas=0)
    with pytest.raises(InvalidScalingInputError, match="malformed"):
        ScalingMemory.from_dict({"window": [[1, 2, 3]]})
    with pytest.raises(InvalidScalingInputError, match="malformed"):
        ScalingMemory.from_dict({"idleSince": "yesterday"})
    with pytest.raises(InvalidScalingInputError, match="implausible"):
        ScalingMemory.from_dict({"window": [[1, -4]]})
    # The error is both the operator's own and a ValueError.
    assert issubclass(InvalidScalingInputError, ValueError)


def test_policy_from_spec_resolves_jobs_per_pod() -> None:
    from bgq_operator.scaling import policy_from_spec
    from bgq_operator.spec import parse_spec

    spec = parse_spec(
        {
            "redis": {"url": "redis://r:6379/0"},
            "worker": {"image": "x:1", "tasksModule": "t", "concurrency": 7},
            "scaling": {"maxReplicas": 3, "scaleDownDelaySeconds": 3},
        }
    )
    policy = policy_from_spec(spec, paused=True)
    assert (policy.jobs_per_pod, policy.max_replicas, policy.scale_down_delay_s) == (7, 3, 3.0)
    assert policy.paused
