"""The one idempotent reconcile: spec -> worker Deployment, dependency checks, status.

Called from the kopf create/resume/update handlers and from the operator-level periodic loop
(drift repair), always with the queue's lock held, so it never races the autoscaler. It:

1. validates the spec (an invalid one gives Ready=False/InvalidSpec and an event, no crash loop);
2. reads the referenced Secrets to find the Redis endpoint (missing -> Ready=False/SecretMissing);
3. creates the Deployment, or puts back drift: a server-side dry-run of the desired object (with
   the live ``replicas``, which belong to the autoscaler) shows what the API server would store;
   only if that differs from the live object is the real update sent;
4. pings Redis (RedisReachable);
5. writes status explicitly and posts events for meaningful changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from bgq.connection import probe
from bgq.errors import BgqError, ConfigError
from bgq_operator import conditions as cond
from bgq_operator import metrics
from bgq_operator.errors import DependencyError, InvalidSpecError, KubernetesApiError
from bgq_operator.kube import ConflictError, Kube
from bgq_operator.manifests import ManifestOptions, build_deployment
from bgq_operator.redisconn import RedisClients, resolve_endpoint
from bgq_operator.spec import BackgroundQueueSpec, deployment_name, parse_spec
from bgq_operator.state import (
    DeploymentView,
    Problem,
    QueueState,
    Registry,
    compose_status,
    status_body,
)

log = logging.getLogger("bgq_operator.reconcile")

RECONCILE_CONCURRENCY = 8
STATUS_WRITE_CONCURRENCY = 8
URGENT_HOLD_S = 1.0
"""The longest a bookkeeping write waits for scale-ups from zero to be sent (no starvation)."""
VOLATILE_REFRESH_S = 10.0
"""Write status at most this often when only explanations, timers or memory changed."""


class WriteGate:
    """Orders the operator's API writes: a scale-up from zero (a queue with no worker and a job
    waiting: the latency users feel) goes first; the bookkeeping (status patches and events,
    at most ``STATUS_WRITE_CONCURRENCY`` in flight) and the scale changes of queues that have
    workers wait while one is on its way. The API server serves requests in the order they
    come: under a burst of 50 busy queues, a scale PATCH sent behind their writes waits for
    them. A write is held back at most ``URGENT_HOLD_S``."""

    def __init__(self, slots: int = STATUS_WRITE_CONCURRENCY) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._urgent = 0
        self._clear = asyncio.Event()
        self._clear.set()

    @property
    def urgent(self) -> int:
        """Scale-ups from zero being decided or sent."""
        return self._urgent

    def begin_urgent(self) -> None:
        """A queue woken from rest is being decided (until :meth:`end_urgent`)."""
        self._urgent += 1
        self._clear.clear()

    def end_urgent(self) -> None:
        """Its scale PATCH is done (or none was needed)."""
        self._urgent = max(0, self._urgent - 1)
        if not self._urgent:
            self._clear.set()

    async def urgent_done(self, deadline: float | None = None) -> None:
        """Wait until no scale-up from zero is pending (at most ``URGENT_HOLD_S``, or until
        the monotonic ``deadline``)."""
        if not self._clear.is_set():
            if deadline is None:
                deadline = time.monotonic() + URGENT_HOLD_S
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._clear.wait(), max(0.0, deadline - time.monotonic()))

    @contextlib.asynccontextmanager
    async def bookkeeping(self) -> AsyncIterator[None]:
        """A slot for a status patch or an event, taken only while no scale-up from zero is
        pending (a write that waited for a slot checks again before it goes)."""
        deadline = time.monotonic() + URGENT_HOLD_S
        while True:
            await self.urgent_done(deadline)
            await self._slots.acquire()
            if self._clear.is_set() or time.monotonic() >= deadline:
                break
            self._slots.release()
        try:
            yield
        finally:
            self._slots.release()


@dataclass
class Context:
    """What reconcile and the autoscaler share: API access, the queues, Redis clients."""

    kube: Kube
    registry: Registry = field(default_factory=Registry)
    redis: RedisClients = field(default_factory=RedisClients)
    manifest_options: ManifestOptions = field(default_factory=ManifestOptions)
    """Operator-wide Deployment settings (``bgq-operator`` flags)."""
    on_change: Callable[[], None] = lambda: None
    """Called when queues or their endpoints change (wakes the autoscaler's bookkeeping)."""
    reconcile_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(RECONCILE_CONCURRENCY)
    )
    """Reconciles running at once (1,000 queues at start-up must not flood the API server)."""
    write_gate: WriteGate = field(default_factory=WriteGate)
    """Status patches and events in flight at once, behind scale-ups from zero. Scaling
    writes do not take a slot: a decision is never queued behind bookkeeping."""


def initial_replicas(spec: BackgroundQueueSpec) -> int:
    """Replicas of a new Deployment: minReplicas when autoscaling, else spec.replicas."""
    return spec.scaling.min_replicas if spec.scaling.enabled else spec.replicas


def _drifted(live: Mapping[str, Any], would_be: Mapping[str, Any]) -> list[str]:
    """Top-level parts of the Deployment that differ between live and the dry-run result."""
    diffs = []
    if live.get("spec") != would_be.get("spec"):
        diffs.append("spec")
    for part in ("labels", "ownerReferences"):
        if (live.get("metadata") or {}).get(part) != (would_be.get("metadata") or {}).get(part):
            diffs.append(f"metadata.{part}")
    return diffs


async def post_event(ctx: Context, state: QueueState, type_: str, reason: str, msg: str) -> None:
    """Post an event on the BackgroundQueue; failures are logged, never raised."""
    log.info("%s/%s %s: %s", state.namespace, state.name, reason, msg)
    try:
        async with ctx.write_gate.bookkeeping():
            await ctx.kube.post_event(state.involved, type_, reason, msg)
    except KubernetesApiError as exc:
        log.warning("could not post event %s on %s/%s: %s", reason, *state.key, exc)


async def flush_status(ctx: Context, state: QueueState, force: bool = False) -> None:
    """Recompute conditions, patch status if it changed, post events for condition changes."""
    before = state.last_status.get("conditions") if state.last_status else None
    state.refresh_conditions()
    status = status_body(compose_status(state))
    now = time.monotonic()
    last = state.last_status
    if not force and last is not None and _essential(status) == _essential(last):
        fresh = now - state.last_status_at < VOLATILE_REFRESH_S
        if fresh or status == last or _timeless(status) == _timeless(last):
            return
    try:
        async with ctx.write_gate.bookkeeping():
            await ctx.kube.patch_queue_status(state.namespace, state.name, status)
    except KubernetesApiError as exc:
        log.warning("could not patch status of %s/%s: %s", *state.key, exc)
        return
    state.last_status, state.last_status_at = status, now
    for change in cond.transitions(before, status["conditions"]):
        if before is None and change["status"] == "True" and change["type"] != cond.READY:
            continue  # first status: only Ready (and problems) are news
        if change["type"] == cond.SCALING:
            continue  # scaling decisions have their own events
        if _woken_from_zero(before, change):
            continue  # the ScaledUp event says it; a Warning per wake-up would be noise
        good = (change["status"] == "True") != (change["type"] == cond.DEGRADED)
        reason = _EVENT_REASONS.get((change["type"], change["status"]), change["type"])
        await post_event(
            ctx, state, "Normal" if good else "Warning", reason,
            f"{change['type']}={change['status']} ({change['reason']}): {change['message']}",
        )  # fmt: skip


def _woken_from_zero(before: Any, change: Mapping[str, Any]) -> bool:
    """Ready going from True/ScaledToZero to False/WorkersStarting: a queue at zero got work
    and its first pods are starting, the normal way out of rest (pods that never get ready
    show up as Degraded once the Deployment's progress deadline passes)."""
    old = cond.find(before, cond.READY)
    return (
        change["type"] == cond.READY
        and change.get("reason") == "WorkersStarting"
        and old is not None
        and old.get("reason") == "ScaledToZero"
    )


_EVENT_REASONS = {
    (cond.READY, "True"): "Ready",
    (cond.READY, "False"): "NotReady",
    (cond.REDIS_REACHABLE, "True"): "RedisReachable",
    (cond.REDIS_REACHABLE, "False"): "RedisUnreachable",
    (cond.DEGRADED, "True"): "Degraded",
    (cond.DEGRADED, "False"): "Recovered",
}


_VOLATILE_LIMIT = ("runSeconds", "running", "startable")
"""Figures of ``status.scaling.limit`` refreshed like the queue figures, not per tick."""


def _essential(status: Mapping[str, Any]) -> dict[str, Any]:
    """Status without the fields that change on every tick (figures, explanations, memory).

    A change there alone is written at most every ``VOLATILE_REFRESH_S``, so an idle queue
    does not cost an API write (and a watch event) per poll.
    """
    out = dict(status)
    if "scaling" in out:
        out["scaling"] = {
            k: v for k, v in out["scaling"].items() if k not in ("memory", "reason", "demand")
        }
        limit = out["scaling"].get("limit")
        if isinstance(limit, Mapping):  # the measured figures move every tick; the caps stay
            out["scaling"]["limit"] = {k: v for k, v in limit.items() if k not in _VOLATILE_LIMIT}
    # the queue figures (backlog, in-flight, ...) change on every tick of a busy queue: they
    # are refreshed with the next essential change or every VOLATILE_REFRESH_S, not per tick
    # (a burst on 50 queues would otherwise cost a status write per queue per wake-up)
    out.pop("queue", None)
    out["conditions"] = [
        {k: v for k, v in c.items() if not (c.get("type") == cond.SCALING and k == "message")}
        for c in out.get("conditions") or ()
    ]
    return out


def _timeless(status: Mapping[str, Any]) -> Any:
    """Status without the clock where it carries no meaning: the time of a zero-need entry in
    ``scaling.memory.window``. The window keeps strictly decreasing needs, so a zero entry is
    always the newest, is replaced by the next observation and never bounds a decision; its
    stamp moving on every tick is the one thing an idle queue's status changes, and writing
    that is what made 1,000 idle queues cost ~4,700 PATCHes a minute. An idle queue now writes
    nothing at all (a restart reads the older stamp, which is equally meaningless)."""
    memory = (status.get("scaling") or {}).get("memory")
    if not isinstance(memory, Mapping) or not isinstance(memory.get("window"), list):
        return status
    window = [
        [None, entry[1]] if isinstance(entry, list) and len(entry) == 2 and entry[1] == 0
        else entry
        for entry in memory["window"]
    ]  # fmt: skip
    scaling = {**status["scaling"], "memory": {**memory, "window": window}}
    return {**status, "scaling": scaling}


APPLY_ATTEMPTS = 3
"""Read-compare-replace rounds before a conflict is left to the caller's retry."""


async def _apply_deployment(ctx: Context, state: QueueState, spec: BackgroundQueueSpec) -> None:
    """Create the Deployment or put back drift, re-reading it when it changed under us.

    The replace carries the live resourceVersion, so it can never overwrite a replica count the
    autoscaler (or the Deployment controller's bookkeeping) wrote in between: such a write makes
    it fail with 409, and the next round starts again from a fresh read.
    """
    for attempt in range(1, APPLY_ATTEMPTS + 1):
        try:
            await _apply_deployment_once(ctx, state, spec)
            return
        except ConflictError:
            if attempt == APPLY_ATTEMPTS:
                raise


def _adopt(state: QueueState, body: dict[str, Any]) -> DeploymentView:
    """Take ``body`` as the Deployment this reconcile left in place (it matches the spec).

    Its generation becomes the operator's own (``written_generation``), so the watch event our
    write triggers is not mistaken for someone else's edit; ``state.applied`` remembers what
    was verified, for the resync's fast path (:func:`_verified`).
    """
    view = DeploymentView.from_body(body)
    state.deployment = view
    state.written_generation = view.generation
    return view


def _verified(state: QueueState, view: DeploymentView, wanted: str) -> None:
    """Remember that the Deployment at ``view.generation`` carries the manifest ``wanted``."""
    state.applied = (view.generation, wanted, time.monotonic())


def _check_owned(live: Mapping[str, Any], state: QueueState) -> None:
    """Refuse to take over a Deployment of the same name that this queue does not own.

    Someone else's Deployment (a Helm release's ``bgq-operator`` when a queue is named
    ``operator``, an app's own ``bgq-x``) is never replaced or scaled: the queue gets the
    ``DeploymentNotOwned`` problem instead, naming the Deployment and the fix.
    """
    owners = (live.get("metadata") or {}).get("ownerReferences") or []
    if any(o.get("uid") == state.uid for o in owners if isinstance(o, Mapping)):
        return
    name = deployment_name(state.name)
    holders = ", ".join(f"{o.get('kind')}/{o.get('name')}" for o in owners) or "no owner"
    raise DependencyError(
        "DeploymentNotOwned",
        f"Deployment {state.namespace}/{name} exists but is not this BackgroundQueue's "
        f"({holders}); bgq leaves it alone. Rename the queue or move that Deployment",
    )


VERIFY_S = 600.0
"""A queue whose Deployment nothing changed is still read and dry-run compared this often
(the safety net for a watch event that never arrived)."""


def needs_resync(state: QueueState, mono: float) -> bool:
    """Whether the periodic resync should reconcile ``state`` (see handlers._resync_forever)."""
    view, applied = state.deployment, state.applied
    return (
        state.problem is not None
        or state.redis_error is not None
        or not state.redis_checked
        or view is None
        or applied is None
        or applied[0] != view.generation
        or mono - applied[2] >= VERIFY_S
    )


def _manifest_key(body: Mapping[str, Any]) -> str:
    """What the operator wants of the Deployment, replicas aside (they are the autoscaler's)."""
    wanted = {**body, "spec": {k: v for k, v in body["spec"].items() if k != "replicas"}}
    return json.dumps(wanted, sort_keys=True, separators=(",", ":"))


async def _apply_deployment_once(
    ctx: Context, state: QueueState, spec: BackgroundQueueSpec
) -> None:
    name, namespace = state.name, state.namespace
    # built once; replicas are set below (the key leaves them out: they are the autoscaler's)
    body = build_deployment(name, namespace, state.uid, spec, 0, options=ctx.manifest_options)
    wanted = _manifest_key(body)
    seen = state.deployment
    if seen is not None and state.applied is not None:
        # Fast path (a resync of 1,000 queues costs no API call): the manifest is the one last
        # verified, and no one changed the Deployment since (the watch shows a newer
        # generation as soon as anyone does, and that reconcile takes the full path).
        generation, applied, verified_at = state.applied
        if (
            wanted == applied
            and seen.generation == generation == state.written_generation
            and time.monotonic() - verified_at < VERIFY_S
        ):
            return
    live = await ctx.kube.get_deployment(namespace, deployment_name(name))
    if live is None:
        body["spec"]["replicas"] = initial_replicas(spec)
        created = await ctx.kube.create_deployment(namespace, body)
        view = _adopt(state, created)
        _verified(state, view, wanted)
        await post_event(
            ctx, state, "Normal", "DeploymentCreated",
            f"created Deployment {deployment_name(name)} with {view.replicas} replicas",
        )  # fmt: skip
        return
    _check_owned(live, state)
    body["spec"]["replicas"] = int((live.get("spec") or {}).get("replicas") or 0)
    body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
    would_be = await ctx.kube.replace_deployment(namespace, body, dry_run=True)
    diffs = _drifted(live, would_be)
    if diffs:
        updated = await ctx.kube.replace_deployment(namespace, body)
        _verified(state, _adopt(state, updated), wanted)
        await post_event(
            ctx, state, "Normal", "DeploymentUpdated",
            f"Deployment {deployment_name(name)} brought back to the spec ({', '.join(diffs)} "
            "differed); replicas left as they were",
        )  # fmt: skip
    else:
        _verified(state, _adopt(state, live), wanted)


async def check_redis(ctx: Context, state: QueueState) -> None:
    """Probe the queue's Redis (reachable, and of the topology spec.redis.mode names) and record
    RedisReachable; a topology mistake (a cluster node in Standalone mode, a plain server in
    Cluster mode, an unknown Sentinel master) becomes the RedisMisconfigured problem."""
    if state.endpoint is None:
        return
    try:
        client = ctx.redis.client(state.endpoint)
        await probe(client, state.endpoint.settings())
    except ConfigError as exc:
        state.redis_error = None
        state.problem = Problem("RedisMisconfigured", _spec_names(str(exc)))
    except (BgqError, redis.exceptions.RedisError, OSError) as exc:
        text = str(exc)
        state.redis_error = _spec_names(
            text
            if text.startswith("cannot reach")
            else f"cannot reach Redis at {state.endpoint.label}: {exc}"
        )
    else:
        state.redis_error = None
    state.redis_checked = True


_SPEC_NAMES = {
    "BGQ_REDIS_MODE=cluster": "spec.redis.mode: Cluster",
    "BGQ_REDIS_MODE=standalone": "spec.redis.mode: Standalone",
    "BGQ_REDIS_MODE is cluster": "spec.redis.mode is Cluster",
    "BGQ_REDIS_MODE is standalone": "spec.redis.mode is Standalone",
    "BGQ_REDIS_SENTINEL_MASTER": "spec.redis.sentinelMaster",
    "BGQ_REDIS_NODES": "spec.redis.nodes",
    "BGQ_REDIS_URL": "spec.redis.url",
    "BGQ_REDIS_PASSWORD": "spec.redis.passwordSecretRef",
}


def _spec_names(message: str) -> str:
    """A connection error's message in the words of the BackgroundQueue spec."""
    for env, spec_field in _SPEC_NAMES.items():
        message = message.replace(env, spec_field)
    return message


async def reconcile(
    ctx: Context,
    *,
    namespace: str,
    name: str,
    uid: str,
    generation: int,
    spec: Mapping[str, Any],
    annotations: Mapping[str, str] | None = None,
) -> QueueState:
    """Bring one BackgroundQueue's children and status in line with its spec. Idempotent.

    Raises :class:`ConflictError` when the Deployment changed under us (the caller retries);
    every other problem ends up in conditions and events instead of an exception.
    """
    state = ctx.registry.get(namespace, name)
    async with ctx.reconcile_slots, state.lock:
        state.uid, state.generation = uid, generation
        state.annotations = dict(annotations or {})
        try:
            parsed = parse_spec(spec)
        except InvalidSpecError as exc:
            state.spec, state.problem = None, Problem("InvalidSpec", str(exc))
            metrics.RECONCILES.labels("invalid-spec").inc()
            await flush_status(ctx, state)
            return state
        state.spec, state.problem = parsed, None
        try:
            state.endpoint = await resolve_endpoint(ctx.kube, namespace, parsed.redis)
        except DependencyError as exc:
            state.endpoint, state.problem = None, Problem(exc.reason, exc.message)
        try:
            await _apply_deployment(ctx, state, parsed)
        except ConflictError:
            metrics.RECONCILES.labels("conflict").inc()
            raise
        except KubernetesApiError as exc:
            state.problem = Problem("DeploymentFailed", str(exc))
        except DependencyError as exc:  # a Deployment of that name that is not ours
            state.problem = Problem(exc.reason, exc.message)
        await check_redis(ctx, state)
        outcome = "ok" if state.problem is None else "problem"
        metrics.RECONCILES.labels(outcome).inc()
        await flush_status(ctx, state)
    ctx.on_change()
    return state


async def forget(ctx: Context, namespace: str, name: str) -> None:
    """A BackgroundQueue is gone: drop its state (its Deployment goes by garbage collection)."""
    if ctx.registry.forget(namespace, name) is not None:
        metrics.forget_queue(namespace, name)
        ctx.on_change()
