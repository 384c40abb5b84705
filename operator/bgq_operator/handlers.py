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
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import kopf

from bgq_operator.autoscaler import Autoscaler
from bgq_operator.errors import KubernetesApiError
from bgq_operator.kube import ConflictError, Kube
from bgq_operator.manifests import LABEL_MANAGED_BY, LABEL_QUEUE, MANAGED_BY, ManifestOptions
from bgq_operator.reconcile import Context, forget, needs_resync, reconcile
from bgq_operator.schedules import Scheduler
from bgq_operator.spec import GROUP, PLURAL, VERSION
from bgq_operator.state import DeploymentView, QueueState, adopt_status

log = logging.getLogger("bgq_operator.handlers")

RESYNC_S = 30.0
"""How often every queue is reconciled again (drift, Secrets appearing, Redis coming back)."""


@dataclass
class OperatorMemo:
    """The operator's process-wide objects, carried by kopf's ``memo`` (no module globals).

    The entry point creates it with the options from its flags and passes it to
    ``kopf.operator(memo=...)``; the startup handler fills in the rest before any resource
    handler runs. Kopf hands each resource's handlers a shallow copy, so the objects (and the
    ``pending`` set) are shared while the attributes are set once, at startup.
    """

    manifest_options: ManifestOptions = field(default_factory=ManifestOptions)
    ctx: Context | None = None
    autoscaler: Autoscaler | None = None
    scheduler: Scheduler | None = None
    resync: asyncio.Task[None] | None = None
    pending: set[asyncio.Task[Any]] = field(default_factory=set)
    """Reconciles started from watch events (ended before the connections close)."""

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task that :func:`cleanup` cancels and waits for."""
        task = asyncio.create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)


def _ctx(memo: OperatorMemo) -> Context:
    if memo.ctx is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return memo.ctx


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


def _memo(memo: Any) -> OperatorMemo:
    """Kopf's ``memo`` argument, checked (a bare ``kopf.run`` would pass a ``kopf.Memo``)."""
    if not isinstance(memo, OperatorMemo):
        raise kopf.PermanentError("start the operator with bgq_operator.__main__ (memo missing)")
    return memo


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Configure kopf, log in, start the autoscaler and the resync loop."""
    m = _memo(memo)
    configure(settings)
    kube = await Kube.connect()
    ctx = Context(kube=kube, manifest_options=m.manifest_options)
    autoscaler = Autoscaler(ctx)
    ctx.on_change = autoscaler.refresh
    m.ctx, m.autoscaler = ctx, autoscaler
    m.resync = asyncio.create_task(_resync_forever(ctx), name="bgq-resync")
    m.scheduler = Scheduler(ctx)
    m.scheduler.start()


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    """Stop background tasks, then close connections (nothing may still be using them)."""
    m = _memo(memo)
    if m.resync is not None:
        m.resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await m.resync
    # reconciles started from watch events: finish them before their connections close (a
    # request on a closed session raises, and kopf would turn that into exit code 1)
    await _cancel_and_wait(m.pending)
    if m.scheduler is not None:
        await m.scheduler.stop()
    if m.autoscaler is not None:
        await m.autoscaler.stop()
    if m.ctx is not None:
        await m.ctx.redis.close()
        await m.ctx.kube.close()
    m.ctx = m.autoscaler = m.resync = m.scheduler = None


async def _cancel_and_wait(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended (whatever it raised)."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


async def _judge_after_scale(ctx: Context, state: QueueState, generation: int) -> None:
    """A newer Deployment generation arrived while the autoscaler's replicas write was in
    flight. Its decision holds the queue's lock until the response is in, which sets
    ``written_generation`` to the generation of our own write: a newer one is someone
    else's edit, repaired like any other."""
    async with state.lock:
        pass
    if generation > state.written_generation:
        state.written_generation = generation
        await _reconcile_from_state(ctx, state.namespace, state.name)


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
    """The one operator-level periodic loop (instead of per-object timers).

    It reconciles the queues that may need it: those with a problem (a Secret may have
    appeared, Redis may be back) and those whose Deployment was not verified within VERIFY_S.
    A healthy queue costs nothing here: spec changes arrive by the update handler, edits of
    its Deployment by the Deployment watch, and Redis trouble by the autoscaler's reads.
    """
    while True:
        await asyncio.sleep(RESYNC_S)
        for state in ctx.registry.all():
            if needs_resync(state, time.monotonic()):
                await _reconcile_from_state(ctx, state.namespace, state.name)


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
    memo: Any,
    **_: Any,
) -> None:
    """Create, resume and spec updates all run the same reconcile. Returns None on purpose."""
    m = _memo(memo)
    ctx = _ctx(m)
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
    if m.autoscaler is not None:
        m.autoscaler.poke(state)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def queue_event(
    *,
    type: str | None,
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    spec: kopf.Spec,
    memo: Any,
    **_: Any,
) -> None:
    """Every watch event: note deletions, annotation (pause) and generation changes."""
    m = _memo(memo)
    if m.ctx is None or namespace is None:
        return
    if type == "DELETED":
        await forget(m.ctx, namespace, name)
        return
    state = m.ctx.registry.find(namespace, name)
    if state is None:
        return  # create/resume handlers will register it
    annotations = dict(meta.annotations)
    paused_before = state.paused
    state.annotations = annotations
    state.raw_spec = dict(spec)
    if state.paused != paused_before and m.autoscaler is not None:
        m.autoscaler.poke(state)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def deployment_event(
    type: str | None,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    memo: Any,
    **_: Any,
) -> None:
    """Keep the Deployment's replicas/readiness current; repair edits made by others quickly."""
    m = _memo(memo)
    ctx = m.ctx
    queue = labels.get(LABEL_QUEUE)
    if ctx is None or not queue or namespace is None:
        return
    state = ctx.registry.find(namespace, queue)
    if state is None:
        return
    if type == "DELETED":
        state.deployment = None
        m.track(_reconcile_from_state(ctx, namespace, queue))
        return
    view = DeploymentView.from_body(dict(body))
    if state.deployment is not None and view.generation < state.deployment.generation:
        return  # older than what our own write returned
    was_ready = state.deployment.ready_replicas if state.deployment else None
    state.deployment = view
    if view.generation > state.written_generation and state.written_generation:
        if state.scale_base is not None:  # ours or not: the write's response will say
            m.track(_judge_after_scale(ctx, state, view.generation))
            return
        state.written_generation = view.generation
        m.track(_reconcile_from_state(ctx, namespace, queue))
    elif was_ready != view.ready_replicas and m.autoscaler is not None:
        m.autoscaler.poke(state)
