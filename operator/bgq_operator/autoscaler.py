"""The autoscaler's runtime: read demand, decide (``scaling.decide``), apply.

One :class:`EndpointLoop` per Redis endpoint serves every queue on that Redis:

* it SUBSCRIBEs to ``bgq:wake`` (the enqueue script publishes the queue name, rate-limited), so
  the first job into an idle queue wakes it within milliseconds; a queue woken from rest (0
  replicas, nothing waiting) is decided at once, on a path of its own (no debounce, no wait for
  the tick of busier queues), and its scale PATCH goes ahead of the operator's bookkeeping
  writes (``reconcile.WriteGate``); every wake-up is also decided after a short debounce (so a
  burst is seen whole: a queue woken from rest is decided a second time, from the whole burst);
  without wake-ups it polls at the smallest ``scaling.pollIntervalSeconds`` of its queues;
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
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import redis.exceptions

from bgq import decisions
from bgq.protocol import WAKE_CHANNEL, QueueName
from bgq.stats import QueueDemand, WorkerHeartbeat, read_demand
from bgq_operator import conditions, metrics, queuekeys, tracing
from bgq_operator.conditions import rfc3339
from bgq_operator.errors import KubernetesApiError
from bgq_operator.manifests import selector_string
from bgq_operator.podcost import PodView, plan_scale_down
from bgq_operator.reconcile import Context, flush_status, post_event
from bgq_operator.redisconn import Endpoint
from bgq_operator.scaleevents import ScaleEvents
from bgq_operator.scaling import (
    Observation,
    decide,
    policy_from_spec,
)
from bgq_operator.spec import QueueStatus, ScalingLimitStatus, ScalingStatus, deployment_name
from bgq_operator.state import QueueState

log = logging.getLogger("bgq_operator.autoscaler")
A = TypeVar("A")
B = TypeVar("B")

DEBOUNCE_S = 0.075
"""A wake-up is decided this long after it came (a burst is seen whole), besides a queue woken
from rest, which is decided at once as well (:meth:`EndpointLoop._cold_loop`)."""
COLD_SETTLE_S = 0.01
"""The decision from rest waits until the woken queues' figures are the same in two reads this
far apart (at most DEBOUNCE_S): one job is decided ~10 ms after its enqueue, and a burst a
producer sends job by job is seen whole, so it still gets all its pods in one step."""
IDLE_POLL_S = 30.0
"""A queue at rest (no replicas, nothing waiting, running or delayed) is read on a poll tick
this often; between those reads an enqueue's wake-up decides it at once. Keeps the work of
1,000 idle queues small."""
CONTROL_SYNC_S = 300.0
"""A queue at rest has its control keys (pause, limits) written and read back this often (a
queue with work, every tick): they only change with its spec, which re-reads them at once, and
this bounds how long a Redis that lost them (restart without persistence) goes without."""
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


def queue_figures(demand: QueueDemand) -> QueueStatus:
    """``status.queue`` from a demand read."""
    return QueueStatus(
        backlog=demand.backlog,
        in_flight=demand.in_flight,
        delayed=demand.delayed,
        due=demand.due,
        dead=demand.dead,
        oldest_job_age_seconds=round(demand.oldest_ready_age_ms / 1000, 3),
    )


def _at_rest(state: QueueState, mono: float) -> bool:
    """Whether a poll tick may skip ``state`` (read within ``IDLE_POLL_S``, and then idle)."""
    return mono - state.polled_at < IDLE_POLL_S and _resting(state)


def _resting(state: QueueState) -> bool:
    """No replicas and none wanted, nothing waiting, running or delayed, no error: deciding it
    again from the same figures would change nothing."""
    q, view = state.queue, state.deployment
    return (
        q is not None
        and view is not None
        and view.replicas == 0
        and state.desired == 0
        and not (q.backlog or q.in_flight or q.delayed)
        and not state.warm
        and not state.queue_paused  # a resume (bgq resume) publishes no wake-up: keep polling
        and state.redis_error is None
    )


def _unchanged(state: QueueState, demand: QueueDemand | None) -> bool:
    """A resting queue's fresh read shows what its status already says, and no worker: the
    decision (0 replicas) and the status would come out the same, so neither is redone."""
    return demand is not None and not demand.workers and queue_figures(demand) == state.queue


Span = tuple[str, int, float]
"""A decision's trigger ("wake"/"poll"), and when its tick started (epoch ns, monotonic)."""


class EndpointLoop:
    """Wake-ups, ticks and decisions for the queues of one Redis endpoint."""

    def __init__(self, ctx: Context, endpoint: Endpoint, events: ScaleEvents) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.events = events
        """ScaledUp/ScaledDown events, folded per queue (shared by the Autoscaler's loops)."""
        self._queues: set[tuple[str, str]] = set()
        self._keys: dict[str, tuple[str, str]] = {}
        """Queue name -> registry key of every queue on this endpoint (a wake-up's lookup)."""
        self._order: list[tuple[str, str]] = []
        """The queues' keys, sorted once per change (not on every tick)."""
        self._interval: float | None = None
        """The poll interval, computed again after a change of queues or specs (None)."""
        self.wake = asyncio.Event()
        self.cold: set[str] = set()
        """Queues woken from rest, waiting for the cold path (decided at once, no debounce)."""
        self.cold_wake = asyncio.Event()
        self._settling: set[str] = set()
        """The queues the cold path is reading (until their figures settle) and deciding."""
        self._urgent: set[str] = set()
        """Queues whose decision from rest holds the bookkeeping writes back (WriteGate)."""
        self.retick_soon = False
        self.trigger = "poll"
        """Why the current tick runs: "wake" (a bgq:wake message) or "poll"."""
        self.tick_started_ns = 0
        """When the current tick's wait ended (epoch ns): the decision spans start here."""
        self.tick_started = time.monotonic()
        """When the current tick's wait ended (monotonic): decision latency starts here."""
        self.traced: set[str] = set()
        """Queues named by bgq:wake messages since the last tick: their decision spans link to
        the enqueue that published the wake-up (not pokes or re-decisions)."""
        self.tick_traced: set[str] = set()
        """``traced`` as the current tick took it."""
        self.links: dict[str, str] = {}
        """Per queue, the traceparent of a wake-up not yet linked from a decision span (the
        decision of the queue takes it: each wake-up is linked once)."""
        self.controls: dict[str, queuekeys.Control] = {}
        """The last control read per queue (parked jobs behind per-key limits)."""
        self._span_of: dict[str, tuple[str, int]] = {}
        """Per queue, the trigger and start of the tick its decision task came from (the
        span must not take the next tick's, which may start while this one awaits the API)."""
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.woken: set[str] = set()
        """Queues named by wake-ups since the last tick (only they are decided on a wake)."""
        self.full_due = True
        """The next tick reads every queue (start, new queues or specs, after an error)."""
        self._last_full = 0.0
        self._deciding: dict[str, asyncio.Task[None]] = {}
        """Per queue, the decision being applied (API calls in flight), so ticks never wait."""
        self._again: set[str] = set()
        """Queues to decide again as soon as their decision in flight is applied."""

        self.sampled: dict[str, tuple[float, tuple[Any, ...]]] = {}
        """Per queue, the time and signature of its last decision record (bgq.decisions)."""

    @property
    def queues(self) -> set[tuple[str, str]]:
        """``(namespace, name)`` of every queue on this endpoint."""
        return self._queues

    @queues.setter
    def queues(self, keys: set[tuple[str, str]]) -> None:
        self._queues = set(keys)
        self._order = sorted(self._queues)
        self._keys = {f"{ns}/{n}": (ns, n) for ns, n in self._order}
        self._interval = None

    def wake_for(self, queue_name: str | None) -> None:
        """Decide ``queue_name`` now (None: every queue of this endpoint)."""
        if queue_name is None:
            self.full_due = True
            self._interval = None
        else:
            self.woken.add(queue_name)
        self.wake.set()

    def poked(self, queue_name: str) -> None:
        """``queue_name``'s spec, annotations or Deployment changed: decide it now."""
        self._interval = None
        self.wake_for(queue_name)

    def start(self) -> None:
        """Start the decision loop, the cold path and the wake-up listener."""
        label = self.endpoint.label
        self._tasks = [
            asyncio.create_task(self._run(), name=f"bgq-scale {label}"),
            asyncio.create_task(self._cold_loop(), name=f"bgq-cold {label}"),
            asyncio.create_task(self._listen(), name=f"bgq-wake {label}"),
        ]

    async def stop(self) -> None:
        """Stop the tasks (a flag too: Python 3.11's wait_for can swallow a cancellation),
        and let go of the writes held back for its decisions from rest (the gate is shared
        with the other endpoints' loops)."""
        self._stopping = True
        self.wake.set()
        self.cold_wake.set()
        tasks = [*self._tasks, *self._deciding.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for name in list(self._urgent):
            self._release(name)

    def _states(self, names: set[str] | None = None) -> list[QueueState]:
        """The states of every queue (sorted by key), or of those ``names`` of this endpoint."""
        find = self.ctx.registry.find
        if names is None:
            keys = self._order
        else:
            keys = sorted(k for k in map(self._keys.get, names) if k is not None)
        found = (find(ns, n) for ns, n in keys)
        return [s for s in found if s is not None]

    def _poll_interval(self) -> float:
        if self._interval is None:
            intervals = [s.spec.scaling.poll_interval_seconds for s in self._states() if s.spec]
            self._interval = float(min(intervals, default=2))
        return self._interval

    async def _listen(self) -> None:
        """SUBSCRIBE bgq:wake and set the wake event for our queues; reconnect forever."""
        while not self._stopping:
            pubsub = self.ctx.redis.client(self.endpoint).pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(WAKE_CHANNEL)
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    metrics.WAKEUPS.labels(self.endpoint.label).inc()
                    name = str(message.get("data"))
                    if name in self._keys:
                        self._woken_by_enqueue(name)
            except REDIS_ERRORS as exc:
                log.debug("wake subscription to %s failed: %s", self.endpoint.label, exc)
                await asyncio.sleep(RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _woken_by_enqueue(self, name: str) -> None:
        """A bgq:wake message for one of our queues. One woken from rest takes the cold path
        as well: decided at once (the latency a user feels: the first job into an idle queue
        waits for a pod), with its writes ahead of the bookkeeping of busy queues. The debounced
        tick decides it again from the whole burst (more jobs may have followed that publish
        no wake-up of their own: the enqueue script publishes at most every 200 ms)."""
        if name not in self._deciding and name not in self.cold:
            key = self._keys[name]
            state = self.ctx.registry.find(*key)
            if state is not None and state.spec is not None and _resting(state):
                self.cold.add(name)
                self._hold(name)
                self.cold_wake.set()
        self.traced.add(name)
        self.wake_for(name)

    def _hold(self, name: str) -> None:
        """Hold the bookkeeping writes back until ``name``'s decision from rest is applied."""
        if name not in self._urgent:
            self._urgent.add(name)
            self.ctx.write_gate.begin_urgent()

    def _release(self, name: str) -> None:
        if name in self._urgent:
            self._urgent.discard(name)
            self.ctx.write_gate.end_urgent()

    async def _cold_loop(self) -> None:
        """Decide the queues woken from rest as soon as they are woken (no debounce), in
        batches: those woken while one is being read are read together next."""
        while not self._stopping:
            await self.cold_wake.wait()
            self.cold_wake.clear()
            if self._stopping:
                return
            names, self.cold = self.cold, set()
            self._settling = names
            try:
                await self._settled(names)
                await self.tick(names, full=False, cold=True)
            except Exception:  # as in _run: autoscaling must go on
                log.exception("autoscaler tick (from rest) for %s failed", self.endpoint.label)
            finally:
                self._settling = set()
            for name in names:
                if name not in self._deciding:  # nothing to apply (or it failed): let go
                    self._release(name)

    async def _settled(self, names: set[str]) -> None:
        """Return once the figures of ``names`` read the same twice, COLD_SETTLE_S apart, or
        after DEBOUNCE_S: the first job of a burst woke them, the rest may be on its way (the
        enqueue script publishes at most every 200 ms per queue, so they wake nothing). A
        single job costs ~10 ms and two reads; a read error leaves the judging to the tick."""
        client = self.ctx.redis.client(self.endpoint)
        deadline = time.monotonic() + DEBOUNCE_S
        last: dict[str, tuple[int, int, int, int]] | None = None
        while not self._stopping:
            try:
                read = await read_demand(client, sorted(names), int(time.time() * 1000))
            except REDIS_ERRORS:
                return
            # the counts (not the oldest job's age, which grows between the reads)
            figures = {n: (d.backlog, d.in_flight, d.delayed, d.due) for n, d in read.items()}
            if figures == last or time.monotonic() + COLD_SETTLE_S > deadline:
                return
            last = figures
            await asyncio.sleep(COLD_SETTLE_S)

    async def _run(self) -> None:
        """Poll every queue each poll interval; between polls, decide only the woken queues.

        A wake-up names its queue, so the work of a wake tick grows with the queues that
        changed, not with all the queues on this Redis: a burst on one queue among 1,000 is
        decided as fast as on its own. The poll (full) ticks keep their cadence whatever the
        wake-ups do.
        """
        while not self._stopping:
            interval = self._poll_interval()
            if self.retick_soon:
                self.full_due, self.retick_soon = True, False
                timeout = 0.5
            else:
                timeout = max(0.0, self._last_full + interval - time.monotonic())
            woke = False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
                woke = True
            if self._stopping:
                return
            started = time.monotonic()
            self.trigger = "wake" if woke else "poll"
            self.tick_started_ns = time.time_ns()
            if woke:
                await asyncio.sleep(DEBOUNCE_S)
            self.wake.clear()
            full = self.full_due or time.monotonic() - self._last_full >= interval
            names, self.woken, self.full_due = self.woken, set(), False
            # queues the cold path has yet to decide are its own: decided from a partial burst
            # here, they would not get all their pods in one step; this tick's successor
            # decides them again, after the cold path
            held = names & (self.cold | self._settling)
            if held:
                names -= held
                self.woken |= held
                self.wake.set()
            self.tick_traced, self.traced = self.traced, set()
            if full:
                self._last_full = time.monotonic()
            self.tick_started = started
            try:
                await self.tick(names, full=full)
            except Exception:  # a bug must not stop autoscaling of every queue on this Redis
                log.exception("autoscaler tick for %s failed", self.endpoint.label)

    async def tick(
        self, woken: set[str] | None = None, *, full: bool = True, cold: bool = False
    ) -> None:
        """Read the demand of the queues named in ``woken`` and, on a ``full`` (poll) tick, of
        every other queue not at rest; decide each. ``cold``: the queues in ``woken`` were
        woken from rest, just now (the cold path, beside the loop's own ticks)."""
        mono = time.monotonic()
        woken = woken or set()
        if cold:
            span: Span = ("wake", time.time_ns(), mono)
            traced = woken & self.traced
            self.traced -= traced  # linked from the decision from rest, not linked again
        else:
            span = (self.trigger, self.tick_started_ns, self.tick_started)
            traced = self.tick_traced
        if full:
            states = [s for s in self._states() if s.queue_name in woken or not _at_rest(s, mono)]
        else:
            states = self._states(woken)
        states = [s for s in states if s.spec is not None and s.deployment is not None]
        if not states:
            return
        # a queue at rest that no wake-up names is only checked: its control keys are synced
        # every CONTROL_SYNC_S, and it is decided only if its figures moved (quiet: below)
        resting = {s.queue_name for s in states if s.queue_name not in woken and _resting(s)}
        synced = [s for s in states
                  if s.queue_name not in resting or mono - s.synced_at >= CONTROL_SYNC_S]
        for s in states:
            s.polled_at = mono
        if full and len(self.sampled) > len(self.queues):  # queues that left this endpoint
            self.sampled = {k: v for k, v in self.sampled.items() if k in self._keys}
        client = self.ctx.redis.client(self.endpoint)
        now = time.time()
        error: str | None = None
        demand: dict[str, QueueDemand] = {}
        try:
            control, demand = await _together(  # independent: one round trip, not two
                queuekeys.sync(
                    client, [(QueueName(s.namespace, s.name), s.spec) for s in synced if s.spec]
                ),
                read_demand(client, [s.queue_name for s in states], int(now * 1000)),
            )
            for s in synced:
                s.synced_at = mono
            for s in synced:
                _note_control(s, control.get(s.queue_name), demand.get(s.queue_name), now)
            self.controls.update(control)
            self.links.update(_wake_links(traced, control))
        except REDIS_ERRORS as exc:
            error = f"cannot reach Redis at {self.endpoint.label}: {exc}"
            metrics.REDIS_ERRORS.labels(self.endpoint.label).inc()
        quiet: list[QueueState] = []
        for s in states:
            d = demand.get(s.queue_name)
            if s.queue_name in resting and error is None and _unchanged(s, d):
                quiet.append(s)
            else:
                self._decide(s, d, error, span)
        if quiet:  # still at rest: only the console's once-a-minute sample (one round trip)
            await record_decisions(client, quiet, self.sampled, now)

    def _decide(
        self,
        state: QueueState,
        demand: QueueDemand | None,
        error: str | None,
        span: Span | None = None,
    ) -> None:
        """Apply the decision for ``state`` in a task of its own: a tick never waits for API
        calls (a slow scale or status write on one queue does not delay the next wake-up of
        another). A queue whose previous decision is still being applied is decided again,
        from a fresh read, as soon as that one is done."""
        name = state.queue_name
        if name in self._deciding:
            self._again.add(name)
            return
        trigger, started_ns, started = span or (
            self.trigger, self.tick_started_ns, self.tick_started
        )
        self._span_of[name] = (trigger, started_ns)  # before the next tick
        task = asyncio.create_task(
            self._apply(state, demand, error), name=f"bgq-decide {name}"
        )
        self._deciding[name] = task

        def done(_: asyncio.Task[None]) -> None:
            metrics.DECISION_LATENCY.observe(time.monotonic() - started)
            self._deciding.pop(name, None)
            self._release(name)
            if name in self._again and not self._stopping:
                self._again.discard(name)
                self.wake_for(name)

        task.add_done_callback(done)

    async def _apply(
        self, state: QueueState, demand: QueueDemand | None, error: str | None
    ) -> None:
        """One queue's decision, applied, then its record for the console (bgq.decisions)."""
        await self._scale(state, demand, error)
        client = self.ctx.redis.client(self.endpoint)
        await record_decisions(client, [state], self.sampled, time.time())

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
        if state.lock.locked():  # a reconcile of this queue: its status write must not wait
            self._release(state.queue_name)
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
        wake_link = self.links.pop(state.queue_name, None)
        trigger, started_ns = self._span_of.pop(
            state.queue_name, (self.trigger, self.tick_started_ns)
        )
        heartbeats: list[WorkerHeartbeat] = []
        if demand is not None:
            heartbeats = demand.workers
            state.queue = queue_figures(demand)
        current, ready = view.replicas, view.ready_replicas
        parked = min(state.parked, demand.in_flight) if demand else 0  # pending, not running
        obs = Observation(
            now=now,
            current_replicas=current,
            backlog=demand.backlog + parked if demand else 0,
            in_flight=demand.in_flight - parked if demand else 0,
            due=demand.due if demand else 0,
            due_soon=demand.due if demand else 0,
            ready_replicas=ready,
            busy_pods=busy_pods(heartbeats),
            redis_ok=error is None and demand is not None,
            warm=state.warm,
            run_time_s=state.run_time_s,
            startable=_startable(self.controls.get(state.queue_name), demand),
        )
        limit: dict[str, Any] | None = None
        if not spec.scaling.enabled:
            desired, bound_by = spec.replicas, "manual"
            reason = f"scaling.enabled=false: replicas follow spec.replicas={spec.replicas}"
            demand_figure = obs.demand if obs.redis_ok else None
        else:
            policy = policy_from_spec(spec, paused=state.paused, queue_paused=state.queue_paused)
            memory = state.memory
            decision = decide(policy, obs, memory)
            if decision.desired == 0 and current > 0 and obs.redis_ok:
                soon = await self._due_soon(state, policy.idle_before_zero_s)
                if soon is None or soon > 0:
                    obs = Observation(**{**_fields(obs), "due_soon": soon or 1})
                    decision = decide(policy, obs, memory)
            desired, bound_by, reason = decision.desired, str(decision.bound_by), decision.reason
            demand_figure = decision.demand
            state.memory = decision.memory
            limit = decision.extra.get("limit")

        if desired > current:
            await self._set_replicas(state, current, desired, reason)
        elif desired < current:
            desired, reason = await self._scale_down(state, current, desired, heartbeats, reason)

        tracing.record_decision(
            state.queue_name, started_ns=started_ns or time.time_ns(), trigger=trigger,
            demand=demand_figure, current=current, desired=desired, bound_by=bound_by,
            reason=reason, wake_traceparent=wake_link,
        )  # fmt: skip
        await self._note_limit(state, bound_by, limit, desired)
        state.desired = desired
        state.scaling = ScalingStatus(
            demand=demand_figure, desired=desired, bound_by=bound_by, reason=reason,
            last_scale_time=state.scaling.last_scale_time,
            limit=ScalingLimitStatus.model_validate(limit) if limit else None,
        )  # fmt: skip
        if state.deployment is not None:
            self._record_metrics(state, obs, desired)
        await flush_status(self.ctx, state)

    async def _set_replicas(self, state: QueueState, current: int, target: int, why: str) -> None:
        name = deployment_name(state.name)
        if current > 0 and state.queue_name not in self._urgent:
            await self.ctx.write_gate.urgent_done()  # a scale from zero first
        base = state.deployment.generation if state.deployment is not None else 0
        state.scale_base = base
        try:
            result = await self.ctx.kube.scale_deployment(state.namespace, name, target)
        finally:
            state.scale_base = None
            self._release(state.queue_name)  # its event and status are bookkeeping
        _adopt_scale(state, base, target, int(result["metadata"].get("generation") or 0))
        state.scaling = state.scaling.model_copy(update={"last_scale_time": rfc3339()})
        direction = "up" if target > current else "down"
        metrics.SCALE_EVENTS.labels(state.namespace, state.name, direction).inc()
        await self.events.scaled(state, current, target, why)

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

    async def _note_limit(
        self, state: QueueState, bound_by: str, limit: dict[str, Any] | None, desired: int
    ) -> None:
        """An event with the figures when a limit starts to bound the replicas (not per tick)."""
        was = state.scaling.bound_by
        if bound_by == was or bound_by not in LIMIT_BOUNDS or not limit:
            return
        message = limit_message(bound_by, limit, desired)
        await post_event(self.ctx, state, "Normal", "LimitBound", message)

    def _record_metrics(self, state: QueueState, obs: Observation, desired: int) -> None:
        labels = (state.namespace, state.name)
        if obs.redis_ok:
            metrics.DEMAND.labels(*labels).set(obs.demand)
            metrics.BACKLOG.labels(*labels).set(obs.backlog)
            metrics.IN_FLIGHT.labels(*labels).set(obs.in_flight)
            metrics.record_queue_figures(labels, state.queue)
        metrics.REDIS_REACHABLE.labels(*labels).set(1 if obs.redis_ok else 0)
        metrics.DESIRED.labels(*labels).set(desired)
        if state.deployment is not None:
            metrics.REPLICAS.labels(*labels).set(state.deployment.replicas)
        if state.spec is not None:
            metrics.record_limits(labels, state.spec)


def _scale_events(ctx: Context) -> ScaleEvents:
    async def post(state: QueueState, reason: str, message: str) -> None:
        await post_event(ctx, state, "Normal", reason, message)

    return ScaleEvents(post)


def _adopt_scale(state: QueueState, base: int, target: int, generation: int) -> None:
    """Take the Deployment at ``generation`` as the result of our replicas write on ``base``.

    When that write was the only change (``generation == base + 1``), the manifest verified
    at ``base`` still holds: the verification moves along, so the resync does not read and
    dry-run every Deployment the autoscaler has just scaled. Someone else's write before ours
    leaves the queue unverified (the next resync compares it in full); one after ours is a
    newer generation than ``written_generation``, which the Deployment watch repairs.
    """
    view, applied = state.deployment, state.applied
    if view is not None and view.generation <= generation:
        view.replicas, view.generation = target, generation
    state.written_generation = max(state.written_generation, generation)
    if applied is not None and applied[0] == base and generation == base + 1:
        state.applied = (generation, applied[1], applied[2])


def decision_record(state: QueueState, now: float) -> decisions.DecisionRecord:
    """The console's view of ``state``'s last decision (bgq.decisions, docs/protocol.md 8)."""
    scaling, figures = state.scaling, state.queue
    view = state.deployment
    ready = conditions.find((state.last_status or {}).get("conditions"), conditions.READY) or {}
    demand = scaling.demand
    return decisions.DecisionRecord(
        ms=int(now * 1000),
        demand=float(demand) if demand is not None else None,
        desired=int(scaling.desired or 0),
        replicas=view.replicas if view else 0,
        ready=view.ready_replicas if view else 0,
        bound_by=scaling.bound_by or "",
        reason=scaling.reason or "",
        backlog=int(figures.backlog or 0) if figures else 0,
        in_flight=int(figures.in_flight or 0) if figures else 0,
        due=int(figures.due or 0) if figures else 0,
        dead=int(figures.dead or 0) if figures else 0,
        condition=str(ready.get("status") or "Unknown"),
        condition_reason=str(ready.get("reason") or ""),
    )


async def record_decisions(
    client: Any,
    states: Sequence[QueueState],
    sampled: dict[str, tuple[float, tuple[Any, ...]]],
    now: float,
) -> int:
    """Append the tick's decisions to the queues' capped ``P:decisions`` streams (one pipelined
    round trip, only for queues whose record changed or whose sample is due; idle queues once a
    minute) and refresh them in ``bgq:queues``. Returns how many records were written. A Redis
    failure is logged and skipped: the console's chart is not worth a failed tick."""
    records = []
    for state in states:
        if state.redis_error is not None or not state.redis_checked:
            continue
        record = decision_record(state, now)
        if decisions.due(record, sampled.get(state.queue_name), now):
            records.append((state, record))
    if not records:
        return 0
    pipe = client.pipeline(transaction=False)
    for state, record in records:
        queue = QueueName(state.namespace, state.name)
        pipe.xadd(decisions.decisions_key(queue), record.fields(),
                  maxlen=decisions.MAXLEN, approximate=True)
        pipe.zadd(decisions.QUEUES_INDEX, {state.queue_name: record.ms})
    try:
        await pipe.execute()
    except REDIS_ERRORS as exc:
        log.debug("decision records not written: %s", exc)
        return 0
    for state, record in records:
        sampled[state.queue_name] = (now, record.signature())
    return len(records)


def _note_control(
    state: QueueState, ctl: queuekeys.Control | None, demand: QueueDemand | None, now: float
) -> None:
    """Keep the queue's pause flag and run time estimate from the control read."""
    if ctl is None:
        return
    state.queue_paused, state.parked = ctl.paused, ctl.parked
    if state.run_time is None:
        state.run_time = queuekeys.RunTimeEstimate()
    busy = max(0, (demand.in_flight if demand else 0) - ctl.parked)
    estimate = state.run_time.add(now, ctl.completed, busy)
    if estimate is not None:
        state.run_time_s = estimate


LIMIT_BOUNDS = ("rate-limit", "concurrency-limit")


def limit_message(bound_by: str, limit: dict[str, Any], desired: int) -> str:
    """The LimitBound event: which limit caps the replicas, with its figures (key=value)."""
    what = "spec.limits.rate" if bound_by == "rate-limit" else "per-key concurrency limits"
    figures = " ".join(f"{k}={v}" for k, v in limit.items())
    return f"replicas capped at {desired} by {what}: {figures}"


def _startable(ctl: queuekeys.Control | None, demand: QueueDemand | None) -> int | None:
    """Parked jobs the key limits let start, when all waiting work is parked behind them."""
    if ctl is None or demand is None:
        return None
    unread = max(0, demand.backlog)  # demand.lua's backlog: never-delivered stream entries
    return queuekeys.startable(ctl.summary, unread, demand.due)


def _wake_links(woken: set[str], control: dict[str, queuekeys.Control]) -> dict[str, str]:
    """The traceparent of the wake-up of each woken queue (for the decision span's link)."""
    return {
        name: ctl.wake_trace
        for name in woken
        if (ctl := control.get(name)) is not None and ctl.wake_trace
    }


async def _together(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Await two independent Redis reads at once; raise the first one's error, if any."""
    a, b = await asyncio.gather(first, second, return_exceptions=True)
    if isinstance(a, BaseException):
        raise a
    if isinstance(b, BaseException):
        raise b
    return a, b


def _fields(obs: Observation) -> dict[str, Any]:
    return {name: getattr(obs, name) for name in Observation.__slots__}


class Autoscaler:
    """Keeps one :class:`EndpointLoop` per Redis endpoint in use."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.loops: dict[Endpoint, EndpointLoop] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.events = _scale_events(ctx)

    def refresh(self) -> None:
        """Regroup queues by endpoint; start and stop loops to match (sync, cheap)."""
        groups: dict[Endpoint, set[tuple[str, str]]] = {}
        for state in self.ctx.registry.all():
            if state.endpoint is not None and state.spec is not None:
                groups.setdefault(state.endpoint, set()).add(state.key)
        for endpoint, keys in groups.items():
            loop = self.loops.get(endpoint)
            if loop is None:
                loop = self.loops[endpoint] = EndpointLoop(self.ctx, endpoint, self.events)
                loop.start()
            if keys != loop.queues:
                loop.queues = keys
                loop.wake_for(None)  # new queue or spec: decide every queue now
        for endpoint in [e for e in self.loops if e not in groups]:
            loop = self.loops.pop(endpoint)
            task = asyncio.get_running_loop().create_task(self._retire(loop))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def poke(self, state: QueueState) -> None:
        """Decide for ``state``'s endpoint now (spec, annotation or Deployment changed)."""
        if state.endpoint is not None and state.endpoint in self.loops:
            self.loops[state.endpoint].poked(state.queue_name)

    async def _retire(self, loop: EndpointLoop) -> None:
        await loop.stop()
        await self.ctx.redis.drop_unused(set(self.loops))

    async def stop(self) -> None:
        """Stop every loop, and wait for loops being retired (before connections close)."""
        for loop in list(self.loops.values()):
            await loop.stop()
        self.loops.clear()
        if self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)
        await self.events.close()  # the folded scale events, before the connections close
