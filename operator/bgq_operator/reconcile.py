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

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from bgq_operator import conditions as cond
from bgq_operator import metrics
from bgq_operator.errors import DependencyError, InvalidSpecError, KubernetesApiError
from bgq_operator.kube import ConflictError, Kube
from bgq_operator.manifests import build_deployment
from bgq_operator.redisconn import RedisClients, resolve_endpoint
from bgq_operator.spec import BackgroundQueueSpec, deployment_name, parse_spec
from bgq_operator.state import DeploymentView, Problem, QueueState, Registry, compose_status

log = logging.getLogger("bgq_operator.reconcile")

VOLATILE_REFRESH_S = 10.0
"""Write status at most this often when only explanations, timers or memory changed."""


@dataclass
class Context:
    """What reconcile and the autoscaler share: API access, the queues, Redis clients."""

    kube: Kube
    registry: Registry = field(default_factory=Registry)
    redis: RedisClients = field(default_factory=RedisClients)
    on_change: Callable[[], None] = lambda: None
    """Called when queues or their endpoints change (wakes the autoscaler's bookkeeping)."""


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
        await ctx.kube.post_event(state.involved, type_, reason, msg)
    except KubernetesApiError as exc:
        log.warning("could not post event %s on %s/%s: %s", reason, *state.key, exc)


async def flush_status(ctx: Context, state: QueueState, force: bool = False) -> None:
    """Recompute conditions, patch status if it changed, post events for condition changes."""
    before = state.last_status.get("conditions") if state.last_status else None
    state.refresh_conditions()
    status = compose_status(state)
    now = time.monotonic()
    last = state.last_status
    if not force and last is not None and _essential(status) == _essential(last):
        fresh = now - state.last_status_at < VOLATILE_REFRESH_S
        if fresh or status == last:
            return
    try:
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
        good = (change["status"] == "True") != (change["type"] == cond.DEGRADED)
        reason = _EVENT_REASONS.get((change["type"], change["status"]), change["type"])
        await post_event(
            ctx, state, "Normal" if good else "Warning", reason,
            f"{change['type']}={change['status']} ({change['reason']}): {change['message']}",
        )  # fmt: skip


_EVENT_REASONS = {
    (cond.READY, "True"): "Ready",
    (cond.READY, "False"): "NotReady",
    (cond.REDIS_REACHABLE, "True"): "RedisReachable",
    (cond.REDIS_REACHABLE, "False"): "RedisUnreachable",
    (cond.DEGRADED, "True"): "Degraded",
    (cond.DEGRADED, "False"): "Recovered",
}


def _essential(status: Mapping[str, Any]) -> dict[str, Any]:
    """Status without the fields that change on every tick (explanations, timers, memory).

    A change there alone is written at most every ``VOLATILE_REFRESH_S``, so an idle queue
    does not cost an API write (and a watch event) per poll.
    """
    out = dict(status)
    if "scaling" in out:
        out["scaling"] = {
            k: v for k, v in out["scaling"].items() if k not in ("memory", "reason")
        }
    if "queue" in out:
        out["queue"] = {k: v for k, v in out["queue"].items() if k != "oldestJobAgeSeconds"}
    out["conditions"] = [
        {k: v for k, v in c.items() if not (c.get("type") == cond.SCALING and k == "message")}
        for c in out.get("conditions") or ()
    ]
    return out


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
    """Take ``body`` as the Deployment this reconcile left in place.

    Its generation becomes the operator's own (``written_generation``), so the watch event our
    write triggers is not mistaken for someone else's edit.
    """
    view = DeploymentView.from_body(body)
    state.deployment = view
    state.written_generation = view.generation
    return view


async def _apply_deployment_once(
    ctx: Context, state: QueueState, spec: BackgroundQueueSpec
) -> None:
    name, namespace = state.name, state.namespace
    live = await ctx.kube.get_deployment(namespace, deployment_name(name))
    if live is None:
        body = build_deployment(name, namespace, state.uid, spec, initial_replicas(spec))
        created = await ctx.kube.create_deployment(namespace, body)
        view = _adopt(state, created)
        await post_event(
            ctx, state, "Normal", "DeploymentCreated",
            f"created Deployment {deployment_name(name)} with {view.replicas} replicas",
        )  # fmt: skip
        return
    replicas = int((live.get("spec") or {}).get("replicas") or 0)
    body = build_deployment(name, namespace, state.uid, spec, replicas)
    body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
    would_be = await ctx.kube.replace_deployment(namespace, body, dry_run=True)
    diffs = _drifted(live, would_be)
    if diffs:
        updated = await ctx.kube.replace_deployment(namespace, body)
        _adopt(state, updated)
        await post_event(
            ctx, state, "Normal", "DeploymentUpdated",
            f"Deployment {deployment_name(name)} brought back to the spec ({', '.join(diffs)} "
            "differed); replicas left as they were",
        )  # fmt: skip
    else:
        _adopt(state, live)


async def check_redis(ctx: Context, state: QueueState) -> None:
    """PING the queue's Redis and record RedisReachable."""
    if state.endpoint is None:
        return
    try:
        await ctx.redis.client(state.endpoint).ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        state.redis_error = f"cannot reach Redis at {state.endpoint.label}: {exc}"
    else:
        state.redis_error = None
    state.redis_checked = True


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
    async with state.lock:
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
