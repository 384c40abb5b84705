"""Table tests of pod-deletion-cost and the safe scale-down planner (bgq_operator.podcost)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bgq_operator.podcost import (
    COST_IDLE,
    COST_NOT_READY,
    COST_UNKNOWN,
    DELETION_COST_ANNOTATION,
    INT32_MAX,
    InvalidPodError,
    PodState,
    PodView,
    count_busy,
    plan_scale_down,
    pod_costs,
)

NOW_MS = 1_000_000_000_000


@dataclass(frozen=True)
class HB:
    pod: str
    state: str = "idle"
    in_flight: int = 0
    oldest_started_ms: int = 0
    heartbeat_ms: int = NOW_MS


def pod(name: str, *, ready: bool = True, created: float = 100.0, cost: int | None = None,
        deleting: bool = False) -> PodView:
    return PodView(name=name, ready=ready, created_s=created, cost=cost, deleting=deleting)


def busy(name: str, age_s: float, in_flight: int = 1) -> HB:
    return HB(name, "busy", in_flight, NOW_MS - int(age_s * 1000))


def test_states_and_cost_order() -> None:
    pods = [
        pod("idle"), pod("unknown"), pod("starting", ready=False), pod("draining"),
        pod("young"), pod("old"), pod("gone", deleting=True),
    ]
    hbs = [
        HB("idle"), HB("draining", "draining"), busy("young", 3), busy("old", 3600),
        HB("elsewhere", "busy", 4, 1),  # a pod of another Deployment: ignored
    ]
    costs = {c.name: c for c in pod_costs(pods, hbs, NOW_MS)}
    assert "gone" not in costs
    assert {n: c.state for n, c in costs.items()} == {
        "idle": PodState.IDLE,
        "unknown": PodState.UNKNOWN,
        "starting": PodState.NOT_READY,
        "draining": PodState.DRAINING,
        "young": PodState.BUSY,
        "old": PodState.BUSY,
    }
    order = sorted(costs, key=lambda n: costs[n].cost)
    assert order == ["draining", "starting", "idle", "unknown", "young", "old"]
    # everything without a job is below an unannotated pod (0); every busy pod above
    assert all(c.cost < 0 for c in costs.values() if not c.busy)
    assert all(c.cost > 0 for c in costs.values() if c.busy)
    assert costs["old"].oldest_job_age_s == pytest.approx(3600)


def test_busy_cost_grows_with_age_in_coarse_steps_and_fits_int32() -> None:
    ages = [0, 0.5, 1, 1.9, 2, 10, 100, 3600, 86400 * 365 * 20]
    costs = [pod_costs([pod("p")], [busy("p", a)], NOW_MS)[0].cost for a in ages]
    assert costs == sorted(costs)
    assert costs[0] == costs[1]  # under a second: same bucket
    assert costs[3] == costs[2]  # 1 s and 1.9 s: same bucket, no annotation churn
    assert costs[4] > costs[3]
    assert all(0 < c <= INT32_MAX for c in costs)


def test_several_processes_per_pod() -> None:
    hbs = [HB("p", "idle"), HB("p", "busy", 2, NOW_MS - 5000), HB("q", "draining"),
           HB("q", "idle")]
    costs = {c.name: c for c in pod_costs([pod("p"), pod("q")], hbs, NOW_MS)}
    assert costs["p"].state is PodState.BUSY and costs["p"].in_flight == 2
    # not all of q's processes drain: it is idle
    assert costs["q"].state is PodState.IDLE
    # a draining worker that still finishes jobs is busy
    drain_busy = pod_costs([pod("d")], [HB("d", "draining", 1, NOW_MS - 1000)], NOW_MS)
    assert drain_busy[0].busy


def test_busy_not_ready_pod_is_still_busy() -> None:
    c = pod_costs([pod("p", ready=False)], [busy("p", 10)], NOW_MS)[0]
    assert c.busy and not c.ready
    assert count_busy([pod("p", ready=False), pod("q")], [busy("p", 10)]) == 1


@pytest.mark.parametrize(
    ("pods", "hbs", "current", "desired", "replicas", "victims", "kept"),
    [
        # one long job on one pod, others idle: remove the idle ones only
        ([pod("a"), pod("b"), pod("c")], [busy("a", 60), HB("b"), HB("c")], 3, 1, 1,
         {"b", "c"}, 0),
        # desired would remove a busy pod: stop at the busy ones
        ([pod("a"), pod("b"), pod("c")], [busy("a", 60), busy("b", 5), HB("c")], 3, 1, 2,
         {"c"}, 1),
        # all busy: nothing goes
        ([pod("a"), pod("b")], [busy("a", 60), busy("b", 5)], 2, 0, 2, set(), 2),
        # no heartbeats at all (unknown): treated as idle
        ([pod("a", created=1), pod("b", created=2)], [], 2, 1, 1, {"b"}, 0),
        # not-ready starting pods go before ready idle ones
        ([pod("a"), pod("b", ready=False)], [HB("a")], 2, 1, 1, {"b"}, 0),
        # a busy pod that is not ready would be ranked first by the ReplicaSet: no scale-down
        ([pod("a", ready=False), pod("b")], [busy("a", 9), HB("b")], 2, 1, 2, set(), 1),
        # pods not created yet are dropped first, at no risk
        ([pod("a")], [busy("a", 9)], 3, 1, 1, set(), 0),
        # deleting pods do not count
        ([pod("a"), pod("b", deleting=True), pod("c")], [HB("a"), busy("c", 1)], 2, 1, 1,
         {"a"}, 0),
        # same cost: newer pod first (ReplicaSet tie-break)
        ([pod("old", created=1), pod("new", created=2)], [HB("old"), HB("new")], 2, 1, 1,
         {"new"}, 0),
    ],
)
def test_plan_scale_down(
    pods: list[PodView], hbs: list[HB], current: int, desired: int, replicas: int,
    victims: set[str], kept: int,
) -> None:
    plan = plan_scale_down(pods, hbs, NOW_MS, current, desired)
    assert plan.replicas == replicas, plan.reason
    assert set(plan.victims) == victims, plan.reason
    assert plan.kept_busy == kept
    busy_names = {c.name for c in plan.costs if c.busy}
    assert not busy_names & set(plan.victims)


def test_patches_then_safe() -> None:
    pods = [pod("a", created=1), pod("b", created=2)]
    hbs = [HB("a"), busy("b", 100)]
    plan = plan_scale_down(pods, hbs, NOW_MS, 2, 1)
    # unannotated: equal cost 0, the ReplicaSet would take the newer, busy, pod: not yet safe
    assert plan.victims == ("a",)
    assert not plan.safe_now
    assert plan.patches["a"] == str(COST_IDLE)
    assert int(plan.patches["b"]) > 0
    assert "waiting for the deletion-cost annotations" in plan.reason
    annotated = [pod("a", created=1, cost=int(plan.patches["a"])),
                 pod("b", created=2, cost=int(plan.patches["b"]))]
    again = plan_scale_down(annotated, hbs, NOW_MS, 2, 1)
    assert again.safe_now and again.patches == {} and again.victims == ("a",)


def test_not_a_scale_down() -> None:
    plan = plan_scale_down([pod("a")], [], NOW_MS, 1, 3)
    assert (plan.replicas, plan.victims, plan.safe_now) == (3, (), True)
    assert plan.patches == {"a": str(COST_UNKNOWN)}


def test_from_manifest() -> None:
    manifest = {
        "metadata": {
            "name": "bgq-q-abc",
            "creationTimestamp": "2025-01-02T03:04:05Z",
            "annotations": {DELETION_COST_ANNOTATION: "-100"},
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    view = PodView.from_manifest(manifest)
    assert view == PodView("bgq-q-abc", True, 1735787045.0, False, -100)
    starting = PodView.from_manifest(
        {"metadata": {"name": "x", "deletionTimestamp": "2025-01-02T03:04:05Z",
                      "annotations": {DELETION_COST_ANNOTATION: "junk"}},
         "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    )
    assert (starting.ready, starting.deleting, starting.cost) == (False, True, None)
    assert pod_costs([PodView.from_manifest(manifest)], [], 0)[0].state is PodState.UNKNOWN
    assert COST_NOT_READY < COST_IDLE


def test_from_manifest_errors_are_explained() -> None:
    with pytest.raises(InvalidPodError, match=r"no metadata\.name"):
        PodView.from_manifest({"metadata": {}})
    with pytest.raises(InvalidPodError, match="not RFC 3339"):
        PodView.from_manifest({"metadata": {"name": "p", "creationTimestamp": "yesterday"}})


def test_a_busy_pod_tied_with_a_victim_is_not_safe() -> None:
    """Equal current costs: the ReplicaSet's tie-break is its own; wait for the annotations."""
    pods = [pod("idle", created=2, cost=0), pod("busy", created=1, cost=0)]
    plan = plan_scale_down(pods, [HB("idle"), busy("busy", 5)], NOW_MS, 2, 1)
    assert plan.victims == ("idle",)
    assert not plan.safe_now
    # a not-ready idle pod goes before every ready pod whatever the costs: safe at once
    pods = [pod("starting", ready=False), pod("busy")]
    plan = plan_scale_down(pods, [busy("busy", 5)], NOW_MS, 2, 1)
    assert plan.victims == ("starting",) and plan.safe_now
