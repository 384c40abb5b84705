"""The autoscaler's own replicas writes are not mistaken for someone else's edits.

Real redis-server, recording fake API, the real Deployment watch handler. The watch event of a
scale PATCH can reach the operator before the PATCH's response does; before this was handled,
each such race was a whole reconcile, and it (and, 30 s later, the resync of every Deployment
the autoscaler had scaled) cost a GET and a dry-run PUT of the Deployment: ~3 of each per
second with 50 busy queues among 1,000 (bench/operator_scale.py), writes that a scale-up from
zero then waited behind. A real edit by someone else while a scale write is in flight is still
repaired at once.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

from tests.integration.operator.test_op_runtime import (
    NS,
    QUEUE,
    FakeKube,
    apply,
    eventually,
    runtime,
    spec_for,
)

import bgq
from bgq_operator import handlers, metrics
from bgq_operator.autoscaler import Autoscaler
from bgq_operator.reconcile import Context, needs_resync
from bgq_operator.state import QueueState

__all__ = ["runtime"]  # the fixture, shared with test_op_runtime.py

DEPLOYMENT = "bgq-orders"


def reconciles() -> float:
    """Reconciles run so far (any outcome), from the operator's own counter."""
    return sum(
        metrics.REGISTRY.get_sample_value("bgq_operator_reconciles_total", {"outcome": o}) or 0.0
        for o in ("ok", "problem", "conflict", "invalid-spec")
    )


def deployment_reads(kube: FakeKube) -> list[str]:
    """The reconcile's reads and dry-runs of the Deployment since the calls were cleared."""
    return [what for _, what, _ in kube.calls if what in ("get", "dry-run", "replace")]


def record_reads(kube: FakeKube) -> None:
    """Make the fake's GETs and dry-run PUTs show up in ``kube.calls``."""
    get, replace = kube.get_deployment, kube.replace_deployment

    async def recorded_get(namespace: str, name: str) -> dict[str, Any] | None:
        kube._rec("get", name)
        return await get(namespace, name)

    async def recorded_replace(
        namespace: str, body: dict[str, Any], dry_run: bool = False
    ) -> dict[str, Any]:
        if dry_run:
            kube._rec("dry-run", None)
        return await replace(namespace, body, dry_run)

    kube.get_deployment = recorded_get  # type: ignore[method-assign]
    kube.replace_deployment = recorded_replace  # type: ignore[method-assign]


def watch_event_first(
    kube: FakeKube, memo: handlers.OperatorMemo, foreign_edit: bool = False
) -> None:
    """The fake's scale PATCH delivers its watch event (and, with ``foreign_edit``, someone
    else's template edit right after ours) to the real handler before it returns."""
    scale = kube.scale_deployment

    async def racing_scale(namespace: str, name: str, replicas: int) -> dict[str, Any]:
        result = await scale(namespace, name, replicas)
        await deliver(memo, kube)
        if foreign_edit:
            live = kube.deployments[name]
            live["spec"]["template"]["metadata"].setdefault("labels", {})["edited"] = "by-hand"
            live["metadata"]["generation"] += 1
            await deliver(memo, kube)
        await asyncio.sleep(0.01)  # the response is slower than the watch
        return result

    kube.scale_deployment = racing_scale  # type: ignore[method-assign]


async def deliver(memo: handlers.OperatorMemo, kube: FakeKube) -> None:
    body = copy.deepcopy(kube.deployments[DEPLOYMENT])
    handler: Any = handlers.deployment_event  # kopf's decorator types it as a watching callback
    await handler(
        type="MODIFIED", body=body, namespace=NS, labels=body["metadata"]["labels"], memo=memo
    )


async def scaled_once(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str, foreign_edit: bool = False
) -> tuple[QueueState, handlers.OperatorMemo, float]:
    """One scale-up 0 -> 3 whose watch event beats its response (see watch_event_first); the
    queue's state, the handlers' memo and how many reconciles the race cost."""
    ctx, kube, autoscaler = runtime
    memo = handlers.OperatorMemo(ctx=ctx, autoscaler=autoscaler)
    record_reads(kube)
    watch_event_first(kube, memo, foreign_edit)
    spec = spec_for(redis_url)
    state = await apply(ctx, spec)
    state.raw_spec = spec  # what the kopf handlers keep (a repair reconciles from it)
    await asyncio.sleep(0.3)  # the wake-up subscription is up
    kube.calls.clear()
    before = reconciles()
    with bgq.Client(redis_url) as client:
        await asyncio.to_thread(client.enqueue_many, QUEUE, [bgq.JobSpec("app.tasks.noop")] * 25)
    await eventually(kube.scales, 3.0, "the scale-up")
    await eventually(lambda: state.desired == 3 and not state.lock.locked(), 3.0, "the decision")
    await asyncio.gather(*memo.pending)  # whatever the handler started has run
    return state, memo, reconciles() - before


async def test_the_watch_event_of_our_own_scale_costs_no_reconcile(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    kube = runtime[1]
    state, _, reconciled = await scaled_once(runtime, redis_url)
    assert kube.scales() == [3]
    assert reconciled == 0, "our own write started a reconcile"
    assert deployment_reads(kube) == [], "our own write was taken for someone else's"
    assert state.deployment is not None and state.deployment.generation == state.written_generation
    # the verification moved along with our write: the resync leaves the queue alone
    assert not needs_resync(state, time.monotonic()), state.applied


async def test_someone_elses_edit_during_our_scale_is_repaired_at_once(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str
) -> None:
    kube = runtime[1]
    _, memo, reconciled = await scaled_once(runtime, redis_url, foreign_edit=True)
    await eventually(lambda: "replace" in deployment_reads(kube), 3.0, "the repair")
    await asyncio.gather(*memo.pending)
    assert reconciled >= 1
    live = kube.deployments[DEPLOYMENT]
    assert "edited" not in live["spec"]["template"]["metadata"].get("labels", {}), live
    assert live["spec"]["replicas"] == 3, "the repair keeps the autoscaler's replicas"
    assert deployment_reads(kube)[:2] == ["get", "dry-run"]
