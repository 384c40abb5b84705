"""The autoscaler's runtime: read demand, decide (``scaling.decide``), apply.

One :class:`EndpointLoop` per Redis endpoint serves every queue on that Redis:

* it SUBSCRIBEs to ``bgq:wake`` (the enqueue script publishes the queue name, rate-limited), so
  the first job into an idle queue wakes it within milliseconds; after a wake-up it waits a short
  debounce (so a pipelined burst is seen whole) and then decides; without wake-ups it polls at
  the smallest ``scaling.pollIntervalSeconds`` of its queues;
* each tick is ONE pipelined round trip (``bgq.stats.read_demand``) for all its queues, plus one
  more only for queues about to go to zero (to see delayed jobs due within the idle window);
* applying: scale up in one step by patching the Deployment's ``replicas``; on scale-down, first
  write ``controller.kubernetes.io/pod-deletion-cost`` on the pods from the heartbeats
  (``podcost.plan_scale_down``), and lower replicas only once the pods carry them, never below
  the pods that run jobs; Redis unreachable -> RedisReachable=False and the policy's fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.exceptions

from bgq.protocol import WAKE_CHANNEL
from bgq.stats import QueueDemand, WorkerHeartbeat, read_demand
from bgq_operator import metrics
from bgq_operator.conditions import rfc3339
from bgq_operator.errors import KubernetesApiError
from bgq_operator.manifests import selector_string
from bgq_operator.podcost import PodView, plan_scale_down
from bgq_operator.reconcile import Context, flush_status, post_event
from bgq_operator.redisconn import Endpoint
from bgq_operator.scaling import (
    InvalidScalingInputError,
    Observation,
    ScalingMemory,
    decide,
    policy_from_spec,
)
from bgq_operator.spec import deployment_name
from bgq_operator.state import QueueState

log = logging.getLogger("bgq_operator.autoscaler")

DEBOUNCE_S = 0.075
RETRY_S = 1.0
REDIS_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


def busy_pods(heartbeats: Sequence[WorkerHeartbeat]) -> int:
    """Pods whose workers report a job running or fetched, among the Deployment's replicas.

    A draining worker got SIGTERM because its pod is being deleted: that pod no longer counts
    as a replica, so its last jobs must not hold an extra replica up while they finish.
    """
    leaving = {hb.pod for hb in heartbeats if hb.state == "draining"}
    return len(
        {
            hb.pod
            for hb in heartbeats
            if (hb.in_flight > 0 or hb.state == "busy") and hb.pod not in leaving
        }
    )


def queue_figures(demand: QueueDemand) -> dict[str, Any]:
    """``status.queue`` from a demand read."""
    return {
        "backlog": demand.backlog,
        "inFlight": demand.in_flight,
        "delayed": demand.delayed,
        "due": demand.due,
        "dead": demand.dead,
        "oldestJobAgeSeconds": round(demand.oldest_ready_age_ms / 1000, 3),
    }


class EndpointLoop:
    """Wake-ups, ticks and decisions for the queues of one Redis endpoint."""

    def __init__(self, ctx: Context, endpoint: Endpoint) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.queues: set[tuple[str, str]] = set()
        self.wake = asyncio.Event()
        self.retick_soon = False
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the decision loop and the wake-up listener."""
        self._tasks = [
            asyncio.create_task(self._run(), name=f"bgq-scale {self.endpoint.label}"),
            asyncio.create_task(self._listen(), name=f"bgq-wake {self.endpoint.label}"),
        ]

    async def stop(self) -> None:
        """Stop both tasks (a flag too: Python 3.11's wait_for can swallow a cancellation)."""
        self._stopping = True
        self.wake.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    def _states(self) -> list[QueueState]:
        found = (self.ctx.registry.find(ns, n) for ns, n in sorted(self.queues))
        return [s for s in found if s is not None]

    def _poll_interval(self) -> float:
        intervals = [s.spec.scaling.poll_interval_seconds for s in self._states() if s.spec]
        return float(min(intervals, default=2))

    async def _listen(self) -> None:
        """SUBSCRIBE bgq:wake and set the wake event for our queues; reconnect forever."""
        names_of = self._names
        while not self._stopping:
            pubsub = self.ctx.redis.client(self.endpoint).pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(WAKE_CHANNEL)
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    metrics.WAKEUPS.labels(self.endpoint.label).inc()
                    if str(message.get("data")) in names_of():
                        self.wake.set()
            except REDIS_ERRORS as exc:
                log.debug("wake subscription to %s failed: %s", self.endpoint.label, exc)
                await asyncio.sleep(RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _names(self) -> set[str]:
        return {f"{ns}/{n}" for ns, n in self.queues}

    async def _run(self) -> None:
        while not self._stopping:
            timeout = 0.5 if self.retick_soon else self._poll_interval()
            self.retick_soon = False
            woke = False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
                woke = True
            if self._stopping:
                return
            started = time.monotonic()
            if woke:
                await asyncio.sleep(DEBOUNCE_S)
            self.wake.clear()
            try:
                await self.tick()
            except Exception:  # a bug must not stop autoscaling of every queue on this Redis
                log.exception("autoscaler tick for %s failed", self.endpoint.label)
            metrics.DECISION_LATENCY.observe(time.monotonic() - started)

    async def tick(self) -> None:
        """Read the demand of every queue on this endpoint and decide each."""
        states = [s for s in self._states() if s.spec is not None and s.deployment is not None]
        if not states:
            return
        client = self.ctx.redis.client(self.endpoint)
        now = time.time()
        error: str | None = None
        demand: dict[str, QueueDemand] = {}
        try:
            demand = await read_demand(client, [s.queue_name for s in states], int(now * 1000))
        except REDIS_ERRORS as exc:
            error = f"cannot reach Redis at {self.endpoint.label}: {exc}"
            metrics.REDIS_ERRORS.labels(self.endpoint.label).inc()
        await asyncio.gather(*(self._scale(s, demand.get(s.queue_name), error) for s in states))

    async def _due_soon(self, state: QueueState, window_s: float) -> int | None:
        """Delayed jobs due within ``window_s`` (second read, only before scaling to zero)."""
        try:
            client = self.ctx.redis.client(self.endpoint)
            now_ms = int(time.time() * 1000)
            read = await read_demand(client, [state.queue_name], now_ms, int(window_s * 1000))
        except REDIS_ERRORS:
            return None
        return read[state.queue_name].due

    async def _scale(
        self, state: QueueState, demand: QueueDemand | None, error: str | None
    ) -> None:
        async with state.lock:
            try:
                await self._scale_locked(state, demand, error)
            except KubernetesApiError as exc:
                log.warning("scaling %s/%s failed: %s", *state.key, exc)
                self.retick_soon = True

    async def _scale_locked(
        self, state: QueueState, demand: QueueDemand | None, error: str | None
    ) -> None:
        spec, view = state.spec, state.deployment
        if spec is None or view is None:
            return
        now = time.time()
        state.redis_error, state.redis_checked = error, True
        heartbeats: list[WorkerHeartbeat] = []
        if demand is not None:
            heartbeats = demand.workers
            state.queue = queue_figures(demand)
        current, ready = view.replicas, view.ready_replicas
        obs = Observation(
            now=now,
            current_replicas=current,
            backlog=demand.backlog if demand else 0,
            in_flight=demand.in_flight if demand else 0,
            due=demand.due if demand else 0,
            due_soon=demand.due if demand else 0,
            ready_replicas=ready,
            busy_pods=busy_pods(heartbeats),
            redis_ok=error is None and demand is not None,
        )
        if not spec.scaling.enabled:
            desired, bound_by = spec.replicas, "manual"
            reason = f"scaling.enabled=false: replicas follow spec.replicas={spec.replicas}"
            demand_figure = obs.demand if obs.redis_ok else None
        else:
            policy = policy_from_spec(spec, paused=state.paused)
            try:
                memory = ScalingMemory.from_dict(state.memory)
            except InvalidScalingInputError as exc:
                log.warning("%s/%s: %s", *state.key, exc)
                memory = ScalingMemory()
            decision = decide(policy, obs, memory)
            if decision.desired == 0 and current > 0 and obs.redis_ok:
                soon = await self._due_soon(state, policy.idle_before_zero_s)
                if soon is None or soon > 0:
                    obs = Observation(**{**_fields(obs), "due_soon": soon or 1})
                    decision = decide(policy, obs, memory)
            desired, bound_by, reason = decision.desired, str(decision.bound_by), decision.reason
            demand_figure = decision.demand
            state.memory = decision.memory.to_dict()

        if desired > current:
            await self._set_replicas(state, current, desired, reason)
        elif desired < current:
            desired, reason = await self._scale_down(state, current, desired, heartbeats, reason)

        state.desired = desired
        state.scaling = {
            k: v
            for k, v in {
                "demand": demand_figure,
                "desired": desired,
                "boundBy": bound_by,
                "reason": reason,
                "lastScaleTime": state.scaling.get("lastScaleTime"),
            }.items()
            if v is not None
        }
        if state.deployment is not None:
            self._record_metrics(state, obs, desired)
        await flush_status(self.ctx, state)

    async def _set_replicas(self, state: QueueState, current: int, target: int, why: str) -> None:
        name = deployment_name(state.name)
        result = await self.ctx.kube.scale_deployment(state.namespace, name, target)
        if state.deployment is not None:
            state.deployment.replicas = target
            state.deployment.generation = int(result["metadata"].get("generation") or 0)
            state.written_generation = state.deployment.generation
        state.scaling["lastScaleTime"] = rfc3339()
        direction = "up" if target > current else "down"
        metrics.SCALE_EVENTS.labels(state.namespace, state.name, direction).inc()
        await post_event(
            self.ctx, state, "Normal", f"Scaled{direction.capitalize()}",
            f"replicas {current} -> {target}: {why}",
        )  # fmt: skip

    async def _scale_down(
        self,
        state: QueueState,
        current: int,
        desired: int,
        heartbeats: Sequence[WorkerHeartbeat],
        why: str,
    ) -> tuple[int, str]:
        """Write deletion costs, then lower replicas if the pods already carry them."""
        pods_raw = await self.ctx.kube.list_pods(state.namespace, selector_string(state.name))
        pods = [PodView.from_manifest(p) for p in pods_raw]
        now_ms = int(time.time() * 1000)
        plan = plan_scale_down(pods, heartbeats, now_ms, current, desired)
        for pod, cost in plan.patches.items():
            await self.ctx.kube.annotate_pod(
                state.namespace, pod, {"controller.kubernetes.io/pod-deletion-cost": cost}
            )
        if not plan.safe_now or plan.replicas >= current:
            self.retick_soon = True  # the annotations are written; lower replicas next tick
            return current, f"{why}; {plan.reason}"
        busy_victims = [c for c in plan.costs if c.name in plan.victims and c.busy]
        interrupted = sum(c.in_flight for c in busy_victims)
        if interrupted:
            metrics.INTERRUPTED_JOBS.labels(state.namespace, state.name).inc(interrupted)
        await self._set_replicas(state, current, plan.replicas, f"{why}; {plan.reason}")
        return plan.replicas, f"{why}; {plan.reason}"

    def _record_metrics(self, state: QueueState, obs: Observation, desired: int) -> None:
        labels = (state.namespace, state.name)
        if obs.redis_ok:
            metrics.DEMAND.labels(*labels).set(obs.demand)
            metrics.BACKLOG.labels(*labels).set(obs.backlog)
            metrics.IN_FLIGHT.labels(*labels).set(obs.in_flight)
        metrics.DESIRED.labels(*labels).set(desired)
        if state.deployment is not None:
            metrics.REPLICAS.labels(*labels).set(state.deployment.replicas)


def _fields(obs: Observation) -> dict[str, Any]:
    return {name: getattr(obs, name) for name in Observation.__slots__}


class Autoscaler:
    """Keeps one :class:`EndpointLoop` per Redis endpoint in use."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.loops: dict[Endpoint, EndpointLoop] = {}

    def refresh(self) -> None:
        """Regroup queues by endpoint; start and stop loops to match (sync, cheap)."""
        groups: dict[Endpoint, set[tuple[str, str]]] = {}
        for state in self.ctx.registry.all():
            if state.endpoint is not None and state.spec is not None:
                groups.setdefault(state.endpoint, set()).add(state.key)
        for endpoint, keys in groups.items():
            loop = self.loops.get(endpoint)
            if loop is None:
                loop = self.loops[endpoint] = EndpointLoop(self.ctx, endpoint)
                loop.start()
            if keys != loop.queues:
                loop.queues = keys
                loop.wake.set()  # new queue or spec: decide now
        for endpoint in [e for e in self.loops if e not in groups]:
            loop = self.loops.pop(endpoint)
            asyncio.get_running_loop().create_task(self._retire(loop))

    def poke(self, state: QueueState) -> None:
        """Decide for ``state``'s endpoint now (spec, annotation or Deployment changed)."""
        if state.endpoint is not None and state.endpoint in self.loops:
            self.loops[state.endpoint].wake.set()

    async def _retire(self, loop: EndpointLoop) -> None:
        await loop.stop()
        await self.ctx.redis.drop_unused(set(self.loops))

    async def stop(self) -> None:
        """Stop every loop."""
        for loop in list(self.loops.values()):
            await loop.stop()
        self.loops.clear()
