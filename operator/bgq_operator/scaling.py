"""The autoscaler's decision: how many worker pods a queue needs now, and why.

This module is pure and deterministic: no I/O, no clock. The runtime loop reads the queue's
demand from Redis and the Deployment from Kubernetes, builds an :class:`Observation` (with the
current time in it), and calls :func:`decide` with the queue's :class:`ScalingPolicy` and the
:class:`ScalingMemory` returned by the previous call. The :class:`Decision` says how many
replicas to set, which rule bound that number (``bound_by``), a sentence explaining it, and the
memory to keep for the next tick. The memory serialises to a small JSON-able dict
(:meth:`ScalingMemory.to_dict`) so the operator can keep it in the object's status and resume
after a restart without scaling down early.

The rules (docs/autoscaling.md has the long form and a worked example):

* demand = backlog + in flight + delayed jobs already due;
  need = clamp(ceil(demand / jobs_per_pod) + idle_headroom (only while demand > 0), min, max).
* Scale up at once and in one step to ``need``. The number is computed from demand alone, never
  from ready pods, so pods requested but still starting count as capacity: no runaway.
* Scale down only to the highest ``need`` seen during the last ``scale_down_delay_s`` (the
  current replica count counts as seen when the memory is fresh), so a down-move needs a full
  delay of sustained lower demand; never below the number of busy pods (pods running a job).
* Scale to zero only when nothing was seen anywhere (backlog, in flight, delayed jobs due within
  the idle window) for ``idle_before_zero_s``; until then one pod stays.
* Redis unreachable: keep the current replicas (``Keep``), or go to ``min`` after the scale-down
  delay (``Min``); unknown work counts as work, so the idle clock restarts.
* Autoscaler paused (annotation ``bgq.dev/autoscaler-paused``): replicas stay exactly where
  they are.
* Queue paused (``spec.paused`` or ``bgq pause``): workers fetch nothing, so the queue goes to
  zero, but never below the pods still running jobs (they finish).
* Schedule pre-warm: with ``warm`` observed (a schedule ticks within its ``warmSeconds``) at
  least one pod, so the tick's job does not wait for a cold start.
* Rate limit (``spec.limits.rate``): never more pods than the limit lets work:
  ``ceil(rate x run time / jobs per pod) + idleHeadroom`` (at least 1), once a run time has
  been observed.
* Per-key concurrency (``spec.limits.keys[].concurrency``): when every waiting job is parked
  behind the key limits (nothing unread in the streams, no delayed job due), never more pods
  than the jobs that can run: ``ceil((running + startable) / jobs per pod) + idleHeadroom``
  (at least 1), where ``startable`` is the parked jobs the keys' free slots let start now.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from bgq_operator.errors import OperatorError

if TYPE_CHECKING:
    from bgq_operator.spec import BackgroundQueueSpec

__all__ = [
    "BoundBy",
    "Decision",
    "InvalidScalingInputError",
    "Observation",
    "ScalingMemory",
    "ScalingPolicy",
    "decide",
    "key_cap",
    "limit_figures",
    "policy_from_spec",
    "rate_cap",
]

RedisFallback = Literal["Keep", "Min"]

# A window of (time, need) pairs longer than this is a bug in the caller (needs are bounded by
# max_replicas and the window keeps strictly decreasing needs), not something to carry around.
_MAX_WINDOW_ENTRIES = 4096


class InvalidScalingInputError(OperatorError, ValueError):
    """A policy, observation or stored memory the autoscaler cannot use; the message says why."""


class BoundBy(StrEnum):
    """The rule that set a decision's replica count (shown as ``status.scaling.boundBy``)."""

    DEMAND = "demand"
    """ceil(demand / jobs per pod)."""
    HEADROOM = "headroom"
    """Demand plus the configured warm idle pods."""
    MIN = "min"
    """Raised to minReplicas."""
    MAX = "max"
    """Capped at maxReplicas: demand needs more."""
    SCALE_DOWN_DELAY = "scale-down-delay"
    """Held at the highest need of the last scaleDownDelaySeconds."""
    IDLE_BEFORE_ZERO = "idle-before-zero"
    """One pod kept until there was no work anywhere for idleSecondsBeforeZero."""
    BUSY_PODS = "busy-pods"
    """Not lowered below the number of pods running a job."""
    REDIS_UNAVAILABLE = "redis-unavailable"
    """Demand unknown: Redis unreachable (Keep or Min)."""
    AUTOSCALER_PAUSED = "autoscaler-paused"
    """The bgq.dev/autoscaler-paused annotation freezes replicas."""
    PAUSED = "paused"
    """The queue is paused (spec.paused or bgq pause): down to the pods still running jobs."""
    SCHEDULE_WARM = "schedule-warm"
    """One pod started before a schedule's tick (warmSeconds)."""
    RATE_LIMIT = "rate-limit"
    """Capped at what spec.limits.rate lets through."""
    CONCURRENCY_LIMIT = "concurrency-limit"
    """Capped at what the per-key concurrency limits (spec.limits.keys) let run."""


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """How one queue scales (``spec.scaling`` with jobs_per_pod resolved).

    Times are seconds. ``jobs_per_pod`` must already be resolved (0 in the spec means the
    worker's concurrency; :func:`policy_from_spec` does that).
    """

    min_replicas: int = 0
    max_replicas: int = 10
    jobs_per_pod: int = 10
    idle_headroom: int = 0
    scale_down_delay_s: float = 30.0
    idle_before_zero_s: float = 60.0
    on_redis_unavailable: RedisFallback = "Keep"
    paused: bool = False
    """The autoscaler is paused (annotation): replicas frozen."""
    queue_paused: bool = False
    """The queue is paused: scale to the busy pods (zero once running jobs finish)."""
    rate_per_s: float | None = None
    """spec.limits.rate as job starts per second (None: no global limit)."""
    rate_jobs: int | None = None
    """spec.limits.rate.jobs, for the figures in status (the maths use ``rate_per_s``)."""
    rate_period_s: float | None = None
    """spec.limits.rate.perSeconds, for the figures in status."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.min_replicas < 0:
            problems.append(f"min_replicas={self.min_replicas} must be >= 0")
        if self.max_replicas < 0:
            problems.append(f"max_replicas={self.max_replicas} must be >= 0")
        if self.min_replicas > self.max_replicas:
            problems.append(
                f"min_replicas={self.min_replicas} must be <= max_replicas={self.max_replicas}"
            )
        if self.jobs_per_pod < 1:
            problems.append(
                f"jobs_per_pod={self.jobs_per_pod} must be >= 1 (resolve 0 to the worker's "
                "concurrency first)"
            )
        if self.idle_headroom < 0:
            problems.append(f"idle_headroom={self.idle_headroom} must be >= 0")
        if not self.scale_down_delay_s >= 0:
            problems.append(f"scale_down_delay_s={self.scale_down_delay_s} must be >= 0")
        if not self.idle_before_zero_s >= 0:
            problems.append(f"idle_before_zero_s={self.idle_before_zero_s} must be >= 0")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            problems.append(f"rate_per_s={self.rate_per_s} must be > 0")
        if self.on_redis_unavailable not in ("Keep", "Min"):
            problems.append(
                f"on_redis_unavailable={self.on_redis_unavailable!r} must be 'Keep' or 'Min'"
            )
        if problems:
            raise InvalidScalingInputError("invalid scaling policy: " + "; ".join(problems))


def policy_from_spec(
    spec: BackgroundQueueSpec, *, paused: bool = False, queue_paused: bool = False
) -> ScalingPolicy:
    """Build the policy of a parsed BackgroundQueue spec (``paused`` from the annotation,
    ``queue_paused`` from spec.paused or the queue's pause key)."""
    scaling = spec.scaling
    rate = spec.limits.rate if spec.limits is not None else None
    return ScalingPolicy(
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        jobs_per_pod=scaling.target_jobs_per_pod(spec.worker.concurrency),
        idle_headroom=scaling.idle_headroom,
        scale_down_delay_s=float(scaling.scale_down_delay_seconds),
        idle_before_zero_s=float(scaling.idle_seconds_before_zero),
        on_redis_unavailable=scaling.on_redis_unavailable,
        paused=paused,
        queue_paused=queue_paused or spec.paused,
        rate_per_s=rate.jobs / rate.per_seconds if rate is not None else None,
        rate_jobs=rate.jobs if rate is not None else None,
        rate_period_s=rate.per_seconds if rate is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Observation:
    """What the runtime saw at ``now`` (seconds since the epoch, so it survives restarts).

    ``due`` is delayed jobs already due (part of demand); ``due_soon`` is delayed jobs due within
    the idle window (``due`` included; read with ``due_window_ms = idle_before_zero_s * 1000``),
    which only blocks scaling to zero. ``current_replicas`` is the Deployment's
    ``spec.replicas`` (pods requested), ``ready_replicas`` its ready pods, ``busy_pods`` the pods
    whose workers report running jobs (see :func:`bgq_operator.podcost.count_busy`). When
    ``redis_ok`` is false the queue figures are ignored.
    """

    now: float
    current_replicas: int
    backlog: int = 0
    in_flight: int = 0
    due: int = 0
    due_soon: int = 0
    ready_replicas: int = 0
    busy_pods: int = 0
    redis_ok: bool = True
    warm: bool = False
    """A schedule ticks within its warmSeconds (keep or start one pod)."""
    run_time_s: float | None = None
    """Observed job run time (for the rate-limit cap); None = not observed yet."""
    startable: int | None = None
    """Parked jobs the per-key concurrency limits let start now, when every waiting job is
    parked behind them (``backlog`` is then only parked jobs); None = not known or not the
    case (unread entries, due delayed jobs, no concurrency keys): no concurrency cap."""

    def __post_init__(self) -> None:
        negative = [
            f"{name}={getattr(self, name)}"
            for name in (
                "current_replicas",
                "backlog",
                "in_flight",
                "due",
                "due_soon",
                "ready_replicas",
                "busy_pods",
            )
            if getattr(self, name) < 0
        ]
        if self.startable is not None and self.startable < 0:
            negative.append(f"startable={self.startable}")
        if negative:
            raise InvalidScalingInputError(
                "observation counts must be >= 0, got " + ", ".join(negative)
            )
        if self.run_time_s is not None and not (
            math.isfinite(self.run_time_s) and self.run_time_s >= 0
        ):
            raise InvalidScalingInputError(
                f"observation run_time_s must be finite and >= 0, got {self.run_time_s}"
            )
        if not math.isfinite(self.now):
            raise InvalidScalingInputError(f"observation time must be finite, got now={self.now}")

    @property
    def demand(self) -> int:
        """Jobs that need a worker slot now: backlog + in flight + due delayed jobs."""
        return self.backlog + self.in_flight + self.due

    @property
    def work_anywhere(self) -> bool:
        """True while anything would need a worker soon (blocks scale to zero)."""
        return (
            self.backlog > 0 or self.in_flight > 0 or self.due > 0 or self.due_soon > 0 or self.warm
        )


@dataclass(frozen=True, slots=True)
class ScalingMemory:
    """What :func:`decide` carries between ticks.

    ``window`` holds ``(time, need)`` pairs of the last ``scale_down_delay_s`` with strictly
    decreasing needs (a sliding-window maximum: its first entry is the highest need of the
    window), so it stays small. ``idle_since`` is the first observation of the current stretch
    without work anywhere (None while there is work or it is unknown), ``last_scale_at`` when
    the decision last changed the replica count.
    """

    window: tuple[tuple[float, int], ...] = ()
    idle_since: float | None = None
    last_scale_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A small JSON-able dict (for the object's status); inverse of :meth:`from_dict`."""
        return {
            "window": [[t, n] for t, n in self.window],
            "idleSince": self.idle_since,
            "lastScaleAt": self.last_scale_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ScalingMemory:
        """Read what :meth:`to_dict` wrote; ``None`` or ``{}`` gives a fresh memory.

        Raises :class:`InvalidScalingInputError` on a malformed dict, so the caller can log it and
        start from a fresh memory (which is safe: it holds the current replicas for a delay).
        """
        if not data:
            return cls()
        try:
            raw_window = data.get("window") or []
            window = tuple((float(t), int(n)) for t, n in raw_window)
            idle_since = data.get("idleSince")
            last_scale = data.get("lastScaleAt")
            memory = cls(
                window=window,
                idle_since=None if idle_since is None else float(idle_since),
                last_scale_at=None if last_scale is None else float(last_scale),
            )
        except (TypeError, ValueError) as exc:
            raise InvalidScalingInputError(
                f"stored scaling memory is malformed ({exc}); expected "
                "{'window': [[time, need], ...], 'idleSince': float|None, "
                f"'lastScaleAt': float|None}}, got {dict(data)!r}"
            ) from exc
        if len(window) > _MAX_WINDOW_ENTRIES or any(n < 0 for _, n in window):
            raise InvalidScalingInputError(
                f"stored scaling memory window is implausible ({len(window)} entries, "
                "needs must be >= 0); start from a fresh memory"
            )
        return memory


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one tick: set ``desired`` replicas (a no-op unless ``changed``)."""

    desired: int
    bound_by: BoundBy
    reason: str
    memory: ScalingMemory
    changed: bool
    demand: int | None = None
    """backlog + in flight + due; None when Redis was unreachable."""
    need: int | None = None
    """Pods the current demand alone needs (after headroom, min and max)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Figures behind the reason (window maximum, seconds left on a timer) for metrics/events."""


def rate_cap(policy: ScalingPolicy, run_time_s: float | None, in_flight: int = 0) -> int | None:
    """Most pods the rate limit keeps busy: ceil(rate x run time / jobs per pod) + headroom.

    Before any run time is observed (no job finished yet) the cap is the jobs in flight plus
    one second of starts (``ceil((in_flight + rate) / jobs per pod)``): it grows by the
    limit's worth every tick until the first completions give the run time.
    """
    if policy.rate_per_s is None:
        return None
    if run_time_s is None:
        busy = math.ceil((in_flight + policy.rate_per_s) / policy.jobs_per_pod - 1e-9)
    else:
        busy = math.ceil(policy.rate_per_s * run_time_s / policy.jobs_per_pod - 1e-9)
    return max(1, busy) + policy.idle_headroom


def key_cap(policy: ScalingPolicy, obs: Observation) -> int | None:
    """Most pods the per-key concurrency limits keep busy, or None when they do not bound.

    Applies only when every waiting job is parked behind the key limits (``obs.startable`` is
    set): then at most the running jobs plus the parked ones the keys' free slots let start
    can run, ``ceil((in_flight + startable) / jobs per pod) + headroom`` (at least 1).
    """
    if obs.startable is None:
        return None
    busy = math.ceil((obs.in_flight + obs.startable) / policy.jobs_per_pod)
    return max(1, busy) + policy.idle_headroom


def limit_figures(policy: ScalingPolicy, obs: Observation) -> dict[str, Any]:
    """The numbers behind the limit caps (``status.scaling.limit``); {} without limits."""
    figures: dict[str, Any] = {}
    cap = rate_cap(policy, obs.run_time_s, obs.in_flight)
    if cap is not None and policy.rate_per_s is not None:
        figures["rate"] = policy.rate_jobs if policy.rate_jobs is not None else policy.rate_per_s
        figures["perSeconds"] = policy.rate_period_s if policy.rate_period_s is not None else 1.0
        figures["jobsPerSecond"] = round(policy.rate_per_s, 6)
        if obs.run_time_s is not None:
            figures["runSeconds"] = round(obs.run_time_s, 3)
        figures["cap"] = cap
    kcap = key_cap(policy, obs)
    if kcap is not None and obs.startable is not None:
        figures["running"] = obs.in_flight
        figures["startable"] = obs.startable
        figures["concurrencyCap"] = kcap
    if figures:
        figures["jobsPerPod"] = policy.jobs_per_pod
        figures["headroom"] = policy.idle_headroom
    return figures


def _need(
    policy: ScalingPolicy, demand: int, obs: Observation | None = None
) -> tuple[int, BoundBy, str]:
    """Pods the demand needs right now, the rule that set the number, and its explanation."""
    pods = math.ceil(demand / policy.jobs_per_pod)
    bound = BoundBy.DEMAND
    words = f"at {policy.jobs_per_pod} jobs per pod needs {pods}"
    if demand > 0 and policy.idle_headroom > 0:
        pods += policy.idle_headroom
        bound = BoundBy.HEADROOM
        words += f" + {policy.idle_headroom} warm headroom = {pods}"
    plus = f" + {policy.idle_headroom} headroom)" if policy.idle_headroom else ")"
    kcap = None if obs is None else key_cap(policy, obs)
    if kcap is not None and pods > kcap:
        assert obs is not None and obs.startable is not None
        pods, bound = kcap, BoundBy.CONCURRENCY_LIMIT
        words += (
            f", capped at {kcap} by the per-key concurrency limits (every waiting job is "
            f"parked behind them: {obs.in_flight} running + {obs.startable} may start "
            f"/ {policy.jobs_per_pod} per pod" + plus
        )
    cap = None if obs is None else rate_cap(policy, obs.run_time_s, obs.in_flight)
    if cap is not None and pods > cap:
        assert obs is not None and policy.rate_per_s is not None
        pods, bound = cap, BoundBy.RATE_LIMIT
        figures = (
            f"{policy.rate_per_s:g} jobs/s x {obs.run_time_s:.3g}s run time"
            if obs.run_time_s is not None
            else f"{obs.in_flight} in flight + {policy.rate_per_s:g} jobs/s, run time not "
            "observed yet"
        )
        words += (
            f", capped at {cap} by the rate limit ({figures} / {policy.jobs_per_pod} per pod"
            + plus
        )
    if obs is not None and obs.warm and pods < 1:
        pods, bound = 1, BoundBy.SCHEDULE_WARM
        words += ", 1 pod pre-warmed for a schedule tick (warmSeconds)"
    if pods > policy.max_replicas:
        pods = policy.max_replicas
        bound = BoundBy.MAX
        words += f", capped at maxReplicas {pods}"
    elif pods < policy.min_replicas:
        pods = policy.min_replicas
        bound = BoundBy.MIN
        words += f", raised to minReplicas {pods}"
    return pods, bound, words


def _slide(
    window: tuple[tuple[float, int], ...], now: float, need: int, span: float
) -> tuple[tuple[float, int], ...]:
    """Add ``(now, need)`` to a sliding-maximum window and drop entries older than ``span``.

    Entries stamped in the future (clock moved back) are treated as stamped now, which only
    makes the autoscaler hold longer.
    """
    kept = [(min(t, now), n) for t, n in window if now - min(t, now) < span and n > need]
    kept.append((now, need))
    return tuple(kept)


def _describe_demand(obs: Observation) -> str:
    return (
        f"demand {obs.demand} (backlog {obs.backlog} + in flight {obs.in_flight} + due {obs.due})"
    )


def decide(policy: ScalingPolicy, obs: Observation, memory: ScalingMemory) -> Decision:
    """Decide the replica count for one tick. Pure: same inputs, same decision."""
    current = obs.current_replicas
    now = obs.now

    if policy.paused:
        # Frozen. The window sees the current count, so scale-down after unpausing waits for a
        # full delay rather than acting on demand observed before the pause.
        window = _slide(memory.window, now, current, policy.scale_down_delay_s)
        return Decision(
            desired=current,
            bound_by=BoundBy.AUTOSCALER_PAUSED,
            reason=f"autoscaler paused by the bgq.dev/autoscaler-paused annotation: replicas "
            f"stay at {current}",
            memory=replace(memory, window=window),
            changed=False,
        )

    if policy.queue_paused:
        # Workers fetch nothing; keep only the pods still running jobs (they finish).
        desired = min(obs.busy_pods, current) if obs.redis_ok else current
        window = _slide(memory.window, now, desired, policy.scale_down_delay_s)
        why = (
            f"{obs.busy_pods} pod(s) still running jobs"
            if obs.redis_ok
            else "Redis unreachable, busy pods unknown"
        )
        return Decision(
            desired=desired,
            bound_by=BoundBy.PAUSED,
            reason=f"queue paused (spec.paused or bgq pause): workers fetch nothing; "
            f"replicas {current} -> {desired} ({why})",
            memory=ScalingMemory(
                window=window,
                idle_since=None,
                last_scale_at=now if desired != current else memory.last_scale_at,
            ),
            changed=desired != current,
            demand=obs.demand if obs.redis_ok else None,
        )

    fresh = not memory.window
    # A fresh memory counts the current replicas as seen now (within maxReplicas).
    window_in = ((now, min(current, policy.max_replicas)),) if fresh else memory.window

    if not obs.redis_ok:
        return _decide_without_redis(policy, obs, memory, window_in)

    demand = obs.demand
    need, need_bound, need_words = _need(policy, demand, obs)
    # The idle clock starts at the first observation without work (not at the last one with
    # work), so sparse ticks or an operator outage can only make it later.
    idle_since = (
        None
        if obs.work_anywhere
        else (now if memory.idle_since is None else min(memory.idle_since, now))
    )
    window = _slide(window_in, now, need, policy.scale_down_delay_s)
    # A lowered maxReplicas applies at once: needs recorded before the change are capped.
    window_max = min(window[0][1], policy.max_replicas)
    base = f"{_describe_demand(obs)} {need_words}"
    extra: dict[str, Any] = {"windowMax": window_max, "busyPods": obs.busy_pods}
    limit = limit_figures(policy, obs)
    if limit:
        extra["limit"] = limit
    if obs.ready_replicas < current:
        base += f"; {obs.ready_replicas} of {current} pods ready (starting pods count)"

    def result(desired: int, bound: BoundBy, action: str) -> Decision:
        changed = desired != current
        return Decision(
            desired=desired,
            bound_by=bound,
            reason=f"{base}; {action}",
            memory=ScalingMemory(
                window=window,
                idle_since=idle_since,
                last_scale_at=now if changed else memory.last_scale_at,
            ),
            changed=changed,
            demand=demand,
            need=need,
            extra=extra,
        )

    if need > current:
        return result(need, need_bound, f"scaling up {current} -> {need} in one step")
    if need == current:
        return result(current, need_bound, f"replicas stay at {current}")

    # need < current: a down-move, to the highest need seen during the delay.
    if window_max >= current:
        held_since = max(t for t, n in window if min(n, policy.max_replicas) >= current)
        left = max(0.0, held_since + policy.scale_down_delay_s - now)
        extra["secondsLeft"] = left
        return result(
            current,
            BoundBy.SCALE_DOWN_DELAY,
            f"holding {current} until demand has been lower for "
            f"{policy.scale_down_delay_s:g}s ({left:.0f}s left)",
        )
    target, bound = window_max, need_bound
    why = ""
    if window_max > need:
        bound = BoundBy.SCALE_DOWN_DELAY
        why = f" (the highest need of the last {policy.scale_down_delay_s:g}s)"
    idle_for = 0.0 if idle_since is None else now - idle_since
    if target == 0 and policy.max_replicas > 0 and idle_for < policy.idle_before_zero_s:
        left = max(0.0, policy.idle_before_zero_s - idle_for)
        extra["secondsLeft"] = left
        target, bound = 1, BoundBy.IDLE_BEFORE_ZERO
        why = (
            f" (keeping one pod until no work anywhere for "
            f"{policy.idle_before_zero_s:g}s, {left:.0f}s left)"
        )
    busy_floor = min(obs.busy_pods, policy.max_replicas)
    if busy_floor > target:
        # Deletion cost steers the ReplicaSet to idle pods, but only while idle pods exist:
        # never go below the pods that run jobs. A lowered maxReplicas still wins.
        target, bound = min(busy_floor, current), BoundBy.BUSY_PODS
        why = f" ({obs.busy_pods} pods are running jobs; never removing a busy pod)"
    if target >= current:
        return result(current, bound, f"replicas stay at {current}{why}")
    return result(target, bound, f"scaling down {current} -> {target}{why}")


def _decide_without_redis(
    policy: ScalingPolicy,
    obs: Observation,
    memory: ScalingMemory,
    window_in: tuple[tuple[float, int], ...],
) -> Decision:
    """Redis unreachable: demand is unknown, so unknown work counts as work.

    The window records what is kept, so after Redis recovers a down-move still waits a full
    delay, and the idle clock restarts (``idle_since = None``).
    """
    current, now = obs.current_replicas, obs.now
    lo, hi = policy.min_replicas, policy.max_replicas
    if policy.on_redis_unavailable == "Keep":
        desired = min(max(current, lo), hi)
        window = _slide(window_in, now, desired, policy.scale_down_delay_s)
        action = (
            f"replicas stay at {current}"
            if desired == current
            else f"replicas {current} -> {desired} to stay within [{lo}, {hi}]"
        )
    else:
        window = _slide(window_in, now, lo, policy.scale_down_delay_s)
        desired = lo if lo >= current else min(current, window[0][1], hi)
        action = (
            f"going to minReplicas {lo}: {current} -> {desired}"
            if desired != current
            else f"replicas stay at {current} until Redis has been unreachable for "
            f"{policy.scale_down_delay_s:g}s"
        )
    changed = desired != current
    return Decision(
        desired=desired,
        bound_by=BoundBy.REDIS_UNAVAILABLE,
        reason=(
            f"Redis unreachable, demand unknown (onRedisUnavailable="
            f"{policy.on_redis_unavailable}); {action}"
        ),
        memory=ScalingMemory(
            window=window,
            idle_since=None,
            last_scale_at=now if changed else memory.last_scale_at,
        ),
        changed=changed,
    )
