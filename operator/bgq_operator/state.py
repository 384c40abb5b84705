"""What the operator knows about each BackgroundQueue, and the status it derives from that.

One :class:`QueueState` per object lives in the :class:`Registry`. Kopf handlers, the reconcile
and the autoscaler update it; :func:`compose_status` turns it into the ``status`` the API shows
(one writer, one shape: reconcile and autoscaler never overwrite each other's fields because
neither writes status directly). The per-queue lock serialises everything that touches one
queue's Deployment, so drift repair and scaling never race each other.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bgq_operator import conditions as cond
from bgq_operator.manifests import selector_string
from bgq_operator.scaling import InvalidScalingInputError, ScalingMemory
from bgq_operator.spec import (
    BackgroundQueueSpec,
    BackgroundQueueStatus,
    Condition,
    QueueStatus,
    ScalingMemoryStatus,
    ScalingStatus,
    ScheduleStatus,
    queue_name,
)

if TYPE_CHECKING:
    from bgq_operator.redisconn import Endpoint

log = logging.getLogger("bgq_operator.state")

PAUSE_ANNOTATION = "bgq.dev/autoscaler-paused"
"""Freezes the autoscaler (replicas stay). Not a queue pause: that is spec.paused."""


@dataclass
class DeploymentView:
    """The parts of the worker Deployment the operator reads (from its watch or a GET)."""

    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    generation: int = 0
    conditions: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> DeploymentView:
        """Read a Deployment object."""
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        return cls(
            replicas=int(spec.get("replicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            updated_replicas=int(status.get("updatedReplicas") or 0),
            generation=int((body.get("metadata") or {}).get("generation") or 0),
            conditions=list(status.get("conditions") or []),
        )


@dataclass
class Problem:
    """Why the queue cannot work right now (becomes Ready=False with this reason)."""

    reason: str
    message: str


@dataclass
class QueueState:
    """Everything known about one BackgroundQueue."""

    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    annotations: dict[str, str] = field(default_factory=dict)
    spec: BackgroundQueueSpec | None = None
    problem: Problem | None = None
    """Spec invalid, a Secret missing, or the Deployment could not be applied."""
    endpoint: Endpoint | None = None
    """The Redis this queue lives on (None until its Secrets could be read)."""
    redis_error: str | None = None
    redis_checked: bool = False
    deployment: DeploymentView | None = None
    written_generation: int = 0
    """Deployment generation after the operator's own last write (newer = someone else's)."""
    scale_base: int | None = None
    """The Deployment's generation when the autoscaler's replicas write in flight was sent
    (None: none in flight). Its watch event can come before its response: a newer generation
    seen meanwhile is judged once the response says which one was ours."""
    applied: tuple[int, str, float] | None = None
    """(generation, manifest key, monotonic time) of the Deployment last verified to match
    the spec: a resync skips the API when nothing changed since (reconcile's fast path)."""
    raw_spec: dict[str, Any] = field(default_factory=dict)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    """``status.conditions`` in the metav1.Condition shape (:mod:`bgq_operator.conditions`)."""
    queue: QueueStatus | None = None
    """``status.queue``: the figures of the last demand read (written by the autoscaler)."""
    scaling: ScalingStatus = field(default_factory=ScalingStatus)
    """``status.scaling`` without its memory (written by the autoscaler)."""
    memory: ScalingMemory = field(default_factory=ScalingMemory)
    """The autoscaler's memory (``status.scaling.memory``: survives operator restarts)."""
    desired: int | None = None
    schedules: list[ScheduleStatus] = field(default_factory=list)
    """``status.schedules`` (written by the schedule loop)."""
    warm: bool = False
    """A schedule ticks within its warmSeconds: keep one pod (pre-warm)."""
    queue_paused: bool = False
    """The queue's pause key exists in Redis (spec.paused or bgq pause)."""
    parked: int = 0
    """Jobs parked by pause or limits (pending under ~parked: waiting, not running)."""
    run_time: Any = None
    """:class:`bgq_operator.queuekeys.RunTimeEstimate` of this queue (rate-limit cap)."""
    run_time_s: float | None = None
    """The latest run time estimate in seconds (None: not observed yet)."""
    polled_at: float = 0.0
    synced_at: float = 0.0
    """When a tick last wrote this queue's control keys (monotonic; queuekeys.sync)."""
    """When the autoscaler last read this queue's demand (monotonic; see IDLE_POLL_S)."""
    last_status: dict[str, Any] | None = None
    last_status_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def key(self) -> tuple[str, str]:
        """``(namespace, name)``."""
        return (self.namespace, self.name)

    @property
    def queue_name(self) -> str:
        """The full queue name ``namespace/name``."""
        return queue_name(self.namespace, self.name)

    @property
    def paused(self) -> bool:
        """Whether the pause annotation freezes replicas."""
        return self.annotations.get(PAUSE_ANNOTATION, "").strip().lower() in ("true", "1", "yes")

    @property
    def involved(self) -> dict[str, Any]:
        """The object reference events point at."""
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    def refresh_conditions(self) -> None:
        """Recompute every condition from the current facts (transition times kept)."""
        gen = self.generation
        conds = self.conditions
        spec = self.spec

        if self.redis_error is not None:
            conds = cond.set_condition(
                conds,
                cond.REDIS_REACHABLE,
                "False",
                "Unreachable",
                self.redis_error,
                generation=gen,
            )
        elif self.redis_checked:
            conds = cond.set_condition(
                conds, cond.REDIS_REACHABLE, "True", "Connected", "Redis answered", generation=gen
            )
        else:
            conds = cond.set_condition(
                conds,
                cond.REDIS_REACHABLE,
                "Unknown",
                "NotChecked",
                "not checked yet",
                generation=gen,
            )

        if spec is None or self.problem is not None:
            conds = cond.set_condition(
                conds,
                cond.SCALING,
                "False",
                "NotReconciled",
                "the spec is not in effect",
                generation=gen,
            )
        elif not spec.scaling.enabled:
            conds = cond.set_condition(
                conds, cond.SCALING, "False", "Manual",
                f"scaling.enabled=false: replicas follow spec.replicas={spec.replicas}",
                generation=gen,
            )  # fmt: skip
        elif self.paused:
            conds = cond.set_condition(
                conds, cond.SCALING, "False", "AutoscalerPaused",
                f"the {PAUSE_ANNOTATION} annotation freezes replicas", generation=gen,
            )  # fmt: skip
        elif spec.paused or self.queue_paused:
            conds = cond.set_condition(
                conds, cond.SCALING, "False", "QueuePaused",
                "the queue is paused (spec.paused or bgq pause): workers fetch nothing and "
                "the queue scales to zero once running jobs finish", generation=gen,
            )  # fmt: skip
        else:
            reason = self.scaling.reason or "waiting for the first decision"
            conds = cond.set_condition(
                conds, cond.SCALING, "True", "Autoscaling", reason, generation=gen
            )

        conds = cond.set_condition(conds, cond.DEGRADED, *self._degraded(), generation=gen)
        conds = cond.set_condition(conds, cond.READY, *self._ready(), generation=gen)
        self.conditions = conds

    def _degraded(self) -> tuple[cond.Status, str, str]:
        for c in self.deployment.conditions if self.deployment else ():
            if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
                return "True", str(c.get("reason") or "ReplicaFailure"), str(c.get("message"))
            if c.get("type") == "Progressing" and c.get("status") == "False":
                return "True", str(c.get("reason") or "NotProgressing"), str(c.get("message"))
        return "False", "AsExpected", "the worker Deployment is progressing normally"

    def _ready(self) -> tuple[cond.Status, str, str]:
        if self.problem is not None:
            return "False", self.problem.reason, self.problem.message
        if self.redis_error is not None:
            return "False", "RedisUnreachable", self.redis_error
        if self.deployment is None:
            return "False", "DeploymentPending", "the worker Deployment does not exist yet"
        replicas, ready = self.deployment.replicas, self.deployment.ready_replicas
        if replicas > 0 and ready == 0:
            return "False", "WorkersStarting", f"0 of {replicas} worker pods ready"
        if replicas == 0:
            return "True", "ScaledToZero", "no workers needed; the first job starts them"
        return "True", "WorkersReady", f"{ready} of {replicas} worker pods ready"


def compose_status(state: QueueState) -> BackgroundQueueStatus:
    """The full ``status`` of a queue, typed (what the operator patches: :func:`status_body`)."""
    deployment = state.deployment
    memory = state.memory
    scaling = state.scaling
    if memory != ScalingMemory():
        scaling = scaling.model_copy(
            update={
                "memory": ScalingMemoryStatus(
                    window=[[t, n] for t, n in memory.window],
                    idle_since=memory.idle_since,
                    last_scale_at=memory.last_scale_at,
                )
            }
        )
    upcoming = [s.next_tick for s in state.schedules if s.next_tick]
    return BackgroundQueueStatus(
        observed_generation=state.generation,
        conditions=[Condition.model_validate(c) for c in state.conditions],
        selector=selector_string(state.name),
        replicas=deployment.replicas if deployment else None,
        ready_replicas=deployment.ready_replicas if deployment else None,
        desired_replicas=state.desired,
        queue=state.queue.model_copy(update={"name": state.queue_name}) if state.queue else None,
        scaling=scaling if scaling != ScalingStatus() else None,
        schedules=list(state.schedules) or None,
        next_tick=min(upcoming) if upcoming else None,
    )


def status_body(status: BackgroundQueueStatus) -> dict[str, Any]:
    """The status as the API takes it: camelCase, unset fields left out."""
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def adopt_status(state: QueueState, body: dict[str, Any]) -> None:
    """Continue from the status a previous operator run wrote (first sight of an object).

    Keeps conditions' lastTransitionTime across restarts, avoids re-posting events for states
    that are not new, and gives the autoscaler its memory back (no early scale-down). A status
    this operator cannot read (hand-edited, or from an incompatible version) is not adopted:
    the queue starts fresh, which is safe (the memory only delays scale-downs).
    """
    if not body:
        return
    try:
        status = BackgroundQueueStatus.model_validate(body)
    except ValidationError as exc:
        log.warning("%s/%s: not adopting the stored status (%s)", *state.key, exc)
        return
    state.last_status = body
    state.conditions = [
        c.model_dump(by_alias=True, exclude_none=True) for c in status.conditions or ()
    ]
    if status.scaling is not None:
        stored = status.scaling.memory
        try:
            state.memory = ScalingMemory.from_dict(
                stored.model_dump(by_alias=True) if stored else None
            )
        except InvalidScalingInputError as exc:
            log.warning("%s/%s: %s", *state.key, exc)
        state.scaling = status.scaling.model_copy(update={"memory": None})
    if status.queue is not None:
        state.queue = status.queue.model_copy(update={"name": None})
    state.schedules = list(status.schedules or ())


class Registry:
    """All known queues by ``(namespace, name)``."""

    def __init__(self) -> None:
        self._queues: dict[tuple[str, str], QueueState] = {}

    def get(self, namespace: str, name: str) -> QueueState:
        """The state of a queue, created empty on first use."""
        key = (namespace, name)
        state = self._queues.get(key)
        if state is None:
            state = self._queues[key] = QueueState(namespace, name)
        return state

    def find(self, namespace: str, name: str) -> QueueState | None:
        """The state of a queue, or None if unknown."""
        return self._queues.get((namespace, name))

    def forget(self, namespace: str, name: str) -> QueueState | None:
        """Drop a deleted queue."""
        return self._queues.pop((namespace, name), None)

    def all(self) -> list[QueueState]:
        """Every known queue."""
        return list(self._queues.values())
