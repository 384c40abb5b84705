"""Which worker pods go on a scale-down: pod-deletion-cost from worker heartbeats.

The ReplicaSet controller picks the pods to delete when replicas go down; the only lever it
offers is the ``controller.kubernetes.io/pod-deletion-cost`` annotation (lower goes first). It
ranks pods by: not ready before ready, then lower deletion cost, then newer first (after
unscheduled/pending pods, which run no job). This module is pure: from the Deployment's pods and
the workers' heartbeats (docs/design.md) it computes

* a deletion cost per pod: pods with no job are cheap (draining < not ready < idle < no
  heartbeat yet, all below the default 0 of an unannotated pod), busy pods are expensive and
  grow with how long their oldest job has run (in coarse log2 buckets, so the annotation does
  not change every second);
* a :class:`ScaleDownPlan`: how far replicas can go down without the ReplicaSet ever picking a
  pod that runs a job, which pods it will remove, which annotations to patch first, and whether
  the pods already carry them (lower replicas only then: the ReplicaSet reads the annotations
  it has, not the ones we meant to write).

The runtime calls :func:`plan_scale_down` when :func:`bgq_operator.scaling.decide` wants fewer
replicas, patches ``plan.patches``, and sets ``plan.replicas`` once ``plan.safe_now`` is true
(normally on the next tick).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from bgq_operator.errors import OperatorError

__all__ = [
    "DELETION_COST_ANNOTATION",
    "InvalidPodError",
    "PodCost",
    "PodState",
    "PodView",
    "ScaleDownPlan",
    "WorkerHeartbeatLike",
    "count_busy",
    "plan_scale_down",
    "pod_costs",
]

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

# Cost tiers. Every pod without a running job is below 0 (the cost of a pod nobody annotated
# yet, e.g. one that just started and may already have taken a job); every busy pod is above.
COST_DRAINING = -300
COST_NOT_READY = -200
COST_IDLE = -100
COST_UNKNOWN = -50
COST_BUSY_BASE = 1000
COST_BUSY_BUCKET = 1000  # per doubling of the oldest job's age (seconds)


class InvalidPodError(OperatorError, ValueError):
    """A pod object the planner cannot read (missing name or malformed timestamps)."""


class WorkerHeartbeatLike(Protocol):
    """The heartbeat fields the planner reads (``bgq.stats.WorkerHeartbeat`` has them)."""

    @property
    def pod(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def oldest_started_ms(self) -> int: ...
    @property
    def heartbeat_ms(self) -> int: ...


class PodState(StrEnum):
    """What a pod is doing, as far as the heartbeats tell."""

    DRAINING = "draining"
    NOT_READY = "not-ready"
    IDLE = "idle"
    UNKNOWN = "unknown"
    """Ready but no heartbeat: treated as idle, after the known-idle pods."""
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class PodView:
    """The parts of a worker pod the planner needs.

    ``created_s`` is the creation time in seconds since the epoch; ``deleting`` is true once the
    pod has a deletionTimestamp (it no longer counts toward replicas); ``cost`` is the deletion
    cost the pod carries now (None when unannotated or unparsable).
    """

    name: str
    ready: bool
    created_s: float
    deleting: bool = False
    cost: int | None = None

    @classmethod
    def from_manifest(cls, pod: Mapping[str, Any]) -> PodView:
        """Read a pod object as the API returns it (a dict: kopf bodies, raw API JSON)."""
        meta = pod.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidPodError(f"pod object has no metadata.name: {dict(meta)!r}")
        try:
            created = meta.get("creationTimestamp")
            created_s = _epoch_seconds(created) if created else 0.0
        except ValueError as exc:
            raise InvalidPodError(
                f"pod {name}: metadata.creationTimestamp {created!r} is not RFC 3339 ({exc})"
            ) from exc
        conditions = (pod.get("status") or {}).get("conditions") or []
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
        )
        raw_cost = (meta.get("annotations") or {}).get(DELETION_COST_ANNOTATION)
        try:
            cost = int(raw_cost) if raw_cost is not None else None
        except ValueError:
            cost = None
        return cls(
            name=name,
            ready=ready,
            created_s=created_s,
            deleting=bool(meta.get("deletionTimestamp")),
            cost=cost,
        )


def _epoch_seconds(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class PodCost:
    """A pod's state and the deletion cost it should carry."""

    name: str
    state: PodState
    cost: int
    ready: bool
    in_flight: int = 0
    oldest_job_age_s: float = 0.0

    @property
    def busy(self) -> bool:
        """True when the pod runs (or has fetched) at least one job."""
        return self.state is PodState.BUSY


@dataclass(frozen=True, slots=True)
class ScaleDownPlan:
    """How to go down safely.

    ``replicas`` is what to set: ``desired``, or higher when going that low would make the
    ReplicaSet remove a busy pod (``kept_busy`` says how many pods that protected).
    ``victims`` are the pods the ReplicaSet will remove, in its order; ``patches`` maps pod
    name to the deletion-cost annotation value to write first; ``safe_now`` is true when the
    pods' current annotations already make the ReplicaSet choose exactly idle pods, i.e.
    replicas may be lowered in this tick.
    """

    replicas: int
    victims: tuple[str, ...]
    kept_busy: int
    patches: dict[str, str]
    safe_now: bool
    costs: tuple[PodCost, ...]
    reason: str


def _clamp_int32(value: int) -> int:
    return max(INT32_MIN, min(INT32_MAX, value))


def _busy_cost(oldest_age_s: float) -> int:
    """Grows by one bucket per doubling of the oldest job's age: 0 s, 1 s, 2 s, 4 s, ...

    Coarse on purpose: the annotation changes O(log age) times per job, not every tick.
    """
    bucket = 0 if oldest_age_s < 1 else int(math.log2(oldest_age_s)) + 1
    return _clamp_int32(COST_BUSY_BASE + COST_BUSY_BUCKET * bucket)


def pod_costs(
    pods: Iterable[PodView], heartbeats: Iterable[WorkerHeartbeatLike], now_ms: int
) -> tuple[PodCost, ...]:
    """Deletion cost and state of every pod not already being deleted, in input order.

    A pod may run several worker processes: it is busy when any has jobs in flight (or says
    busy), draining when all say draining, idle otherwise. Heartbeats of pods not in ``pods``
    are ignored.
    """
    by_pod: dict[str, list[WorkerHeartbeatLike]] = {}
    for hb in heartbeats:
        by_pod.setdefault(hb.pod, []).append(hb)
    out: list[PodCost] = []
    for pod in pods:
        if pod.deleting:
            continue
        beats = by_pod.get(pod.name, [])
        in_flight = sum(max(0, hb.in_flight) for hb in beats)
        started = [hb.oldest_started_ms for hb in beats if hb.oldest_started_ms > 0]
        age_s = max(0.0, (now_ms - min(started)) / 1000) if started else 0.0
        if in_flight > 0 or any(hb.state == "busy" for hb in beats):
            state, cost = PodState.BUSY, _busy_cost(age_s)
        elif beats and all(hb.state == "draining" for hb in beats):
            state, cost = PodState.DRAINING, COST_DRAINING
        elif not pod.ready:
            state, cost = PodState.NOT_READY, COST_NOT_READY
        elif beats:
            state, cost = PodState.IDLE, COST_IDLE
        else:
            state, cost = PodState.UNKNOWN, COST_UNKNOWN
        out.append(PodCost(pod.name, state, cost, pod.ready, in_flight, age_s))
    return tuple(out)


def count_busy(
    pods: Iterable[PodView], heartbeats: Iterable[WorkerHeartbeatLike], now_ms: int = 0
) -> int:
    """Pods running at least one job (``Observation.busy_pods`` for the decision)."""
    return sum(1 for c in pod_costs(pods, heartbeats, now_ms) if c.busy)


def _removal_order(
    costs: Sequence[PodCost], pods: Mapping[str, PodView], use_current: bool
) -> list[PodCost]:
    """The ReplicaSet's deletion ranking: not ready first, lower cost, then newer first."""

    def key(c: PodCost) -> tuple[bool, int, float, str]:
        pod = pods[c.name]
        cost = (pod.cost or 0) if use_current else c.cost
        return (c.ready, cost, -pod.created_s, c.name)

    return sorted(costs, key=key)


def plan_scale_down(
    pods: Iterable[PodView],
    heartbeats: Iterable[WorkerHeartbeatLike],
    now_ms: int,
    current_replicas: int,
    desired: int,
) -> ScaleDownPlan:
    """Plan lowering replicas from ``current_replicas`` toward ``desired`` without removing a
    pod that runs a job (see :class:`ScaleDownPlan`)."""
    pod_list = [p for p in pods if not p.deleting]
    by_name = {p.name: p for p in pod_list}
    costs = pod_costs(pod_list, heartbeats, now_ms)
    patches = {
        c.name: str(c.cost) for c in costs if by_name[c.name].cost != c.cost
    }
    if desired >= current_replicas:
        return ScaleDownPlan(
            replicas=desired, victims=(), kept_busy=0, patches=patches, safe_now=True,
            costs=costs, reason=f"not a scale-down ({current_replicas} -> {desired})",
        )
    order = _removal_order(costs, by_name, use_current=False)
    removable = 0
    for c in order:
        if c.busy:
            break
        removable += 1
    # The ReplicaSet first drops pods it has not created yet, then deletes the first
    # ``existing - replicas`` pods of its ranking: keep that prefix free of busy pods.
    existing = len(pod_list)
    replicas = min(current_replicas, max(desired, existing - removable))
    n_deleted = max(0, existing - replicas)
    victims = tuple(c.name for c in order[:n_deleted])
    kept_busy = replicas - desired
    # Safe in this tick only if, with the annotations the pods carry now, the ReplicaSet's
    # choice cannot contain a busy pod. Its tie-breaks after (ready, cost) (time ready in log2
    # buckets, then a UID hash) are not ours to predict: a busy pod tied with the last pod to
    # go counts as possibly deleted.
    safe_now = True
    if n_deleted:
        now_order = _removal_order(costs, by_name, use_current=True)
        last = now_order[n_deleted - 1]
        boundary = (last.ready, by_name[last.name].cost or 0)
        safe_now = not any(
            c.busy and (c.ready, by_name[c.name].cost or 0) <= boundary for c in now_order
        )
    busy = sum(1 for c in costs if c.busy)
    if kept_busy:
        move = (
            f"keeping {replicas}" if replicas == current_replicas
            else f"scaling down {current_replicas} -> {replicas}"
        )
        reason = (
            f"{move} instead of {desired}: {busy} pods run jobs and going lower would make "
            f"the ReplicaSet remove {kept_busy} of them"
        )
    else:
        reason = f"scaling down {current_replicas} -> {replicas}, removing idle pods only"
    if victims:
        reason += f" ({', '.join(victims)})"
    if not safe_now:
        reason += "; waiting for the deletion-cost annotations to be written first"
    return ScaleDownPlan(
        replicas=replicas,
        victims=victims,
        kept_busy=kept_busy,
        patches=patches,
        safe_now=safe_now,
        costs=costs,
        reason=reason,
    )

