"""Conditions keep their transition time unless status changes; state maps facts to conditions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bgq_operator import conditions as cond
from bgq_operator.scaling import ScalingMemory
from bgq_operator.spec import QueueStatus, ScalingStatus, ScheduleStatus, parse_spec
from bgq_operator.state import (
    DeploymentView,
    Problem,
    QueueState,
    adopt_status,
    compose_status,
    status_body,
)

T0 = datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 10, 5, 0, tzinfo=UTC)


def test_new_condition_has_the_standard_shape() -> None:
    (c,) = cond.set_condition([], "Ready", "True", "WorkersReady", "2 of 2", generation=3, now=T0)
    assert c == {
        "type": "Ready",
        "status": "True",
        "reason": "WorkersReady",
        "message": "2 of 2",
        "lastTransitionTime": "2026-01-01T10:00:00Z",
        "observedGeneration": 3,
    }


def test_transition_time_changes_only_with_status() -> None:
    first = cond.set_condition([], "Ready", "True", "A", "m1", generation=1, now=T0)
    same = cond.set_condition(first, "Ready", "True", "B", "m2", generation=2, now=T1)
    assert same[0]["lastTransitionTime"] == "2026-01-01T10:00:00Z"
    assert (same[0]["reason"], same[0]["message"], same[0]["observedGeneration"]) == ("B", "m2", 2)
    flipped = cond.set_condition(same, "Ready", "False", "C", "m3", generation=2, now=T1)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T10:05:00Z"


def test_other_conditions_are_kept_in_a_fixed_order() -> None:
    conds = cond.set_condition([], "Degraded", "False", "Ok", "", generation=1, now=T0)
    conds = cond.set_condition(conds, "Ready", "True", "Ok", "", generation=1, now=T0)
    conds = cond.set_condition(conds, "Custom", "True", "Ok", "", generation=1, now=T0)
    assert [c["type"] for c in conds] == ["Ready", "Degraded", "Custom"]


def test_transitions_report_status_or_reason_changes() -> None:
    before = cond.set_condition([], "Ready", "True", "A", "x", generation=1, now=T0)
    after = cond.set_condition(before, "Ready", "True", "A", "other message", generation=1)
    assert cond.transitions(before, after) == []
    after = cond.set_condition(before, "Ready", "False", "SecretMissing", "x", generation=1)
    assert [c["reason"] for c in cond.transitions(before, after)] == ["SecretMissing"]


def _state() -> QueueState:
    state = QueueState("shop", "orders", uid="u", generation=4)
    state.spec = parse_spec(
        {"redis": {"url": "redis://r"}, "worker": {"image": "i", "tasksModule": "m"}}
    )
    return state


def test_ready_follows_the_facts() -> None:
    state = _state()
    state.refresh_conditions()
    assert cond.find(state.conditions, "Ready")["reason"] == "DeploymentPending"  # type: ignore[index]
    state.deployment = DeploymentView(replicas=0)
    state.redis_checked = True
    state.refresh_conditions()
    assert cond.find(state.conditions, "Ready")["reason"] == "ScaledToZero"  # type: ignore[index]
    assert cond.is_true(state.conditions, "RedisReachable")
    state.deployment = DeploymentView(replicas=2, ready_replicas=0)
    state.refresh_conditions()
    assert cond.find(state.conditions, "Ready")["reason"] == "WorkersStarting"  # type: ignore[index]
    state.redis_error = "cannot reach Redis"
    state.refresh_conditions()
    ready = cond.find(state.conditions, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "RedisUnreachable")
    state.problem = Problem("SecretMissing", "Secret shop/x does not exist")
    state.refresh_conditions()
    assert cond.find(state.conditions, "Ready")["reason"] == "SecretMissing"  # type: ignore[index]


def test_paused_and_manual_show_in_the_scaling_condition() -> None:
    state = _state()
    state.annotations = {"bgq.dev/autoscaler-paused": "true"}
    state.refresh_conditions()
    assert cond.find(state.conditions, "Scaling")["reason"] == "AutoscalerPaused"  # type: ignore[index]
    state.annotations = {}
    state.queue_paused = True
    state.refresh_conditions()
    assert cond.find(state.conditions, "Scaling")["reason"] == "QueuePaused"  # type: ignore[index]


def test_degraded_mirrors_a_stuck_rollout() -> None:
    state = _state()
    state.deployment = DeploymentView(
        replicas=1,
        conditions=[{"type": "Progressing", "status": "False",
                     "reason": "ProgressDeadlineExceeded", "message": "stuck"}],
    )  # fmt: skip
    state.refresh_conditions()
    degraded = cond.find(state.conditions, "Degraded")
    assert degraded is not None and degraded["reason"] == "ProgressDeadlineExceeded"


def test_compose_status_has_selector_and_generation() -> None:
    state = _state()
    state.deployment = DeploymentView(replicas=2, ready_replicas=1)
    state.queue = QueueStatus(backlog=7)
    state.refresh_conditions()
    status = status_body(compose_status(state))
    assert status["observedGeneration"] == 4
    assert (
        status["selector"] == "app.kubernetes.io/name=bgq-worker,app.kubernetes.io/instance=orders"
    )
    assert (status["replicas"], status["readyReplicas"]) == (2, 1)
    assert status["queue"] == {"name": "shop/orders", "backlog": 7}


def test_status_round_trips_through_adoption() -> None:
    """What one operator run writes, the next one adopts: memory, scaling, schedules, queue."""
    state = _state()
    state.deployment = DeploymentView(replicas=3, ready_replicas=3)
    state.queue = QueueStatus(backlog=2, in_flight=5, oldest_job_age_seconds=1.5)
    state.scaling = ScalingStatus(demand=7, desired=3, bound_by="demand", reason="7 jobs")
    state.memory = ScalingMemory(window=((100.0, 3), (130.0, 1)), idle_since=None,
                                 last_scale_at=99.5)
    state.schedules = [ScheduleStatus(name="nightly", next_tick="2026-12-03T00:00:00Z", missed=0)]
    state.desired = 3
    state.refresh_conditions()
    body = status_body(compose_status(state))
    assert body["scaling"]["memory"] == {"window": [[100.0, 3.0], [130.0, 1.0]],
                                         "lastScaleAt": 99.5}
    assert body["queue"]["name"] == "shop/orders" and body["queue"]["inFlight"] == 5
    assert body["nextTick"] == "2026-12-03T00:00:00Z"

    again = _state()
    adopt_status(again, body)
    assert again.memory == state.memory
    assert again.scaling == state.scaling
    assert again.queue == state.queue
    assert again.schedules == state.schedules
    assert again.conditions == state.conditions
    again.deployment, again.desired = state.deployment, state.desired
    assert status_body(compose_status(again)) == body


@pytest.mark.parametrize(
    "body",
    [
        {"conditions": [{"type": "Ready"}]},  # no status/reason/lastTransitionTime
        {"scaling": {"desired": "many"}},
        {"queue": "not an object"},
    ],
)
def test_an_unreadable_status_is_not_adopted(body: dict[str, Any]) -> None:
    state = _state()
    adopt_status(state, body)
    assert state.last_status is None and state.conditions == [] and state.queue is None


def test_malformed_memory_starts_fresh_but_keeps_the_rest() -> None:
    state = _state()
    body = {"scaling": {"desired": 2, "memory": {"window": [[1.0, -3.0]]}}}
    adopt_status(state, body)
    assert state.memory == ScalingMemory()
    assert state.scaling.desired == 2
