"""Thin kopf handlers: they feed facts into the registry and call :func:`reconcile`.

Finalizer policy: none. There are no per-object timers or daemons (they would make kopf put a
finalizer on every BackgroundQueue, and a queue could not be deleted while the operator is down);
the periodic work is one operator-level loop over the registry, deletion is noticed from the raw
watch event, and the worker Deployment goes by ownerReference garbage collection. Nothing
outside Kubernetes needs cleaning up (Redis keys belong to the queue's users).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from bgq_operator.autoscaler import Autoscaler
from bgq_operator.errors import KubernetesApiError
from bgq_operator.kube import ConflictError, Kube
from bgq_operator.manifests import LABEL_MANAGED_BY, LABEL_QUEUE, MANAGED_BY
from bgq_operator.reconcile import Context, forget, reconcile
from bgq_operator.spec import GROUP, PLURAL, VERSION
from bgq_operator.state import DeploymentView, QueueState

log = logging.getLogger("bgq_operator.handlers")

RESYNC_S = 30.0
"""How often every queue is reconciled again (drift, Secrets appearing, Redis coming back)."""


class Runtime:
    """The operator's process-wide objects (created at startup)."""

    ctx: Context | None = None
    autoscaler: Autoscaler | None = None
    resync: asyncio.Task[None] | None = None
    pending: set[asyncio.Task[Any]] = set()  # noqa: RUF012 - process-wide by design


def _ctx() -> Context:
    if Runtime.ctx is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return Runtime.ctx


def configure(settings: kopf.OperatorSettings) -> None:
    """Kopf settings: own prefix, no progress in status, quiet events, bounded API calls."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"  # never added: see module docstring
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 30
    settings.watching.inactivity_timeout = 70
    settings.scanning.disabled = True
    # watch only our Deployments, filtered by the API server (not every Deployment in memory)
    settings.watching.label_selectors["apps", "deployments"] = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    settings.execution.max_workers = 4


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Configure kopf, log in, start the autoscaler and the resync loop."""
    configure(settings)
    kube = await Kube.connect()
    ctx = Context(kube=kube)
    autoscaler = Autoscaler(ctx)
    ctx.on_change = autoscaler.refresh
    Runtime.ctx, Runtime.autoscaler = ctx, autoscaler
    Runtime.resync = asyncio.create_task(_resync_forever(ctx), name="bgq-resync")


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    """Stop background tasks and close connections."""
    if Runtime.resync is not None:
        Runtime.resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await Runtime.resync
    if Runtime.autoscaler is not None:
        await Runtime.autoscaler.stop()
    if Runtime.ctx is not None:
        await Runtime.ctx.redis.close()
        await Runtime.ctx.kube.close()
    Runtime.ctx = Runtime.autoscaler = Runtime.resync = None


async def _reconcile_from_state(ctx: Context, namespace: str, name: str) -> None:
    state = ctx.registry.find(namespace, name)
    if state is None or not state.raw_spec:
        return
    try:
        await reconcile(
            ctx, namespace=namespace, name=name, uid=state.uid, generation=state.generation,
            spec=state.raw_spec, annotations=state.annotations,
        )  # fmt: skip
    except KubernetesApiError as exc:
        log.info("resync of %s/%s: %s (retrying later)", namespace, name, exc)


async def _resync_forever(ctx: Context) -> None:
    """The one operator-level periodic loop (instead of per-object timers)."""
    while True:
        await asyncio.sleep(RESYNC_S)
        for state in ctx.registry.all():
            await _reconcile_from_state(ctx, state.namespace, state.name)


def adopt_status(state: QueueState, status: dict[str, Any]) -> None:
    """Continue from the status a previous operator run wrote (first sight of an object).

    Keeps conditions' lastTransitionTime across restarts, avoids re-posting events for states
    that are not new, and gives the autoscaler its memory back (no early scale-down).
    """
    if not status:
        return
    state.last_status = status
    state.conditions = list(status.get("conditions") or [])
    scaling = dict(status.get("scaling") or {})
    state.memory = dict(scaling.pop("memory", None) or {})
    state.scaling = scaling
    if status.get("queue"):
        state.queue = {k: v for k, v in status["queue"].items() if k != "name"}


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile_handler(
    *,
    name: str,
    namespace: str | None,
    uid: str,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    **_: Any,
) -> None:
    """Create, resume and spec updates all run the same reconcile. Returns None on purpose."""
    ctx = _ctx()
    assert namespace is not None  # the CRD is namespaced
    state = ctx.registry.get(namespace, name)
    state.raw_spec = dict(spec)
    if state.last_status is None:
        adopt_status(state, dict(status))
    try:
        await reconcile(
            ctx, namespace=namespace, name=name, uid=uid,
            generation=int(meta.get("generation") or 0), spec=spec,
            annotations=dict(meta.annotations),
        )  # fmt: skip
    except ConflictError as exc:
        raise kopf.TemporaryError(f"{exc}; retrying", delay=1) from None
    if Runtime.autoscaler is not None:
        Runtime.autoscaler.poke(state)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def queue_event(
    type: str | None,
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    spec: kopf.Spec,
    **_: Any,
) -> None:
    """Every watch event: note deletions, annotation (pause) and generation changes."""
    if Runtime.ctx is None or namespace is None:
        return
    if type == "DELETED":
        await forget(Runtime.ctx, namespace, name)
        return
    state = Runtime.ctx.registry.find(namespace, name)
    if state is None:
        return  # create/resume handlers will register it
    annotations = dict(meta.annotations)
    paused_before = state.paused
    state.annotations = annotations
    state.raw_spec = dict(spec)
    if state.paused != paused_before and Runtime.autoscaler is not None:
        Runtime.autoscaler.poke(state)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def deployment_event(
    type: str | None,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    **_: Any,
) -> None:
    """Keep the Deployment's replicas/readiness current; repair edits made by others quickly."""
    ctx = Runtime.ctx
    queue = labels.get(LABEL_QUEUE)
    if ctx is None or not queue or namespace is None:
        return
    state = ctx.registry.find(namespace, queue)
    if state is None:
        return
    if type == "DELETED":
        state.deployment = None
        task = asyncio.create_task(_reconcile_from_state(ctx, namespace, queue))
        Runtime.pending.add(task)
        task.add_done_callback(Runtime.pending.discard)
        return
    view = DeploymentView.from_body(dict(body))
    if state.deployment is not None and view.generation < state.deployment.generation:
        return  # older than what our own write returned
    was_ready = state.deployment.ready_replicas if state.deployment else None
    state.deployment = view
    if view.generation > state.written_generation and state.written_generation:
        state.written_generation = view.generation
        task = asyncio.create_task(_reconcile_from_state(ctx, namespace, queue))
        Runtime.pending.add(task)
        task.add_done_callback(Runtime.pending.discard)
    elif was_ready != view.ready_replicas and Runtime.autoscaler is not None:
        Runtime.autoscaler.poke(state)
