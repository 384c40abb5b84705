"""The operator's observability on a real redis-server: decision spans and the new gauges.

Same runtime as test_op_runtime.py (real Redis, wake-up channel, demand script and decision;
a recording fake of the Kubernetes API only).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.integration.operator.test_op_runtime import (
    NAME,
    NS,
    QUEUE,
    FakeKube,
    apply,
    eventually,
    runtime,
    spec_for,
)

import bgq
from bgq.protocol import WAKE_CHANNEL
from bgq_operator import metrics, tracing
from bgq_operator.autoscaler import Autoscaler
from bgq_operator.reconcile import Context

__all__ = ["runtime"]  # the fixture, shared with test_op_runtime.py


def _sample(name: str, **labels: str) -> float | None:
    value = metrics.REGISTRY.get_sample_value(name, {"namespace": NS, "queue": NAME, **labels})
    return value


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_TRACER", provider.get_tracer("bgq_operator"))
    return exporter


async def test_wake_up_decision_makes_a_span_and_fills_the_alert_gauges(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str, spans: InMemorySpanExporter
) -> None:
    ctx, kube, autoscaler = runtime
    spec: dict[str, Any] = {**spec_for(redis_url), "slo": {"maxWaitSeconds": 45}}
    await apply(ctx, spec)
    client = bgq.Client(redis_url)

    def subscribed() -> bool:  # the wake-up listener is up (the poll interval is 30 s)
        counts = client.redis.pubsub_numsub(WAKE_CHANNEL)
        return bool(counts and int(counts[0][1]) > 0)

    await eventually(subscribed, 10.0, "the operator to subscribe to wake-ups")

    def first_poll_done() -> bool:  # the start's poll tick has read and decided the queue
        state = ctx.registry.find(NS, NAME)
        busy = any(loop._deciding for loop in autoscaler.loops.values())
        return state is not None and state.desired == 0 and not busy

    # else, on a loaded machine, that first poll can come after the enqueue and decide it
    await eventually(first_poll_done, 10.0, "the first poll tick")
    await asyncio.to_thread(lambda: [client.enqueue(QUEUE, "app.tasks.noop") for _ in range(25)])
    client.close()
    await eventually(kube.scales, 10.0, "a scale decision")

    def scale_spans() -> list[Any]:
        return [s for s in spans.get_finished_spans() if s.name == f"bgq.scale {QUEUE}"]

    def scaled_up() -> list[Any]:
        return [s for s in scale_spans() if (s.attributes or {}).get("bgq.desired_replicas")]

    found = await eventually(scaled_up, 10.0, "the decision span")
    attrs = dict(found[0].attributes or {})
    assert attrs["bgq.trigger"] == "wake"
    assert attrs["bgq.current_replicas"] == 0
    demand = attrs["bgq.demand"]
    assert isinstance(demand, int) and 0 < demand <= 25  # a loaded machine may split the burst
    assert attrs["bgq.desired_replicas"] == -(-demand // 10) == kube.scales()[0]
    assert attrs["bgq.bound_by"] == "demand"
    assert "scaling up 0 ->" in str(attrs["bgq.reason"])
    assert found[0].start_time is not None and found[0].end_time is not None
    assert found[0].end_time >= found[0].start_time

    assert _sample("bgq_operator_redis_reachable") == 1
    assert _sample("bgq_operator_max_replicas") == 5
    assert _sample("bgq_operator_min_replicas") == 0
    assert _sample("bgq_operator_queue_slo_max_wait_seconds") == 45
    assert _sample("bgq_operator_queue_due") == 0
    assert _sample("bgq_operator_queue_dead") == 0
    age = _sample("bgq_operator_queue_oldest_ready_age_seconds")
    assert age is not None and age >= 0
    assert _sample("bgq_operator_interrupted_jobs_total") == 0  # born at 0 for increase()

    # removing the SLO removes its series (no stale threshold for the alert)
    autoscaler.poke(await apply(ctx, spec_for(redis_url)))  # as the update handler does
    await eventually(
        lambda: _sample("bgq_operator_queue_slo_max_wait_seconds") is None, 10.0,
        "the SLO series to go",
    )  # fmt: skip
    metrics.forget_queue(NS, NAME)
    assert _sample("bgq_operator_max_replicas") is None


async def test_decision_span_is_linked_to_the_enqueue_that_woke_it(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str, spans: InMemorySpanExporter
) -> None:
    """Producer span (bgq.otel) -> P:wake:trace -> decision span: child of and linked to it."""
    from bgq import otel

    ctx, kube, _ = runtime
    await apply(ctx, spec_for(redis_url))
    client = bgq.Client(redis_url)

    def subscribed() -> bool:
        counts = client.redis.pubsub_numsub(WAKE_CHANNEL)
        return bool(counts and int(counts[0][1]) > 0)

    await eventually(subscribed, 10.0, "the operator to subscribe to wake-ups")
    producer_spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(producer_spans))
    assert otel.instrument(provider)
    try:
        # one job wakes the idle queue: its producer span is the wake-up's context
        job = await asyncio.to_thread(client.enqueue, QUEUE, "app.tasks.noop")
    finally:
        otel.uninstrument()
    (enqueue_span,) = [
        s for s in producer_spans.get_finished_spans() if s.name == f"bgq.enqueue {QUEUE}"
    ]
    stored = client.redis.get(f"bgq:{{{QUEUE}}}:wake:trace")
    env = json.loads(str(client.redis.hget(f"bgq:{{{QUEUE}}}:job:{job.id}", "env")))
    env_trace = env["headers"]["traceparent"]
    client.close()
    producer = enqueue_span.get_span_context()
    assert producer is not None and stored == env_trace
    assert str(stored).startswith(f"00-{producer.trace_id:032x}-{producer.span_id:016x}-")

    def woken_decision() -> list[Any]:
        return [
            s for s in spans.get_finished_spans()
            if s.name == f"bgq.scale {QUEUE}" and (s.attributes or {}).get("bgq.trigger") == "wake"
            and (s.attributes or {}).get("bgq.desired_replicas") == 1
        ]  # fmt: skip

    (decision, *_) = await eventually(woken_decision, 10.0, "the woken decision span")
    assert kube.scales() == [1]
    # the decision is in the job's trace, under its enqueue span ...
    assert decision.context is not None
    assert decision.context.trace_id == producer.trace_id
    assert decision.parent is not None and decision.parent.span_id == producer.span_id
    # ... and links to it (the message that caused it)
    assert [(ln.context.trace_id, ln.context.span_id) for ln in decision.links] == [
        (producer.trace_id, producer.span_id)
    ]
    assert dict(decision.links[0].attributes or {}) == {"bgq.link": "wake"}
    assert (decision.attributes or {})["bgq.wake.traceparent"] == stored
    # poll decisions later on are their own traces, without a link
    polls = [s for s in spans.get_finished_spans()
             if s.name == f"bgq.scale {QUEUE}" and s is not decision and s.parent is None]
    assert all(not s.links for s in polls)


async def test_decision_span_ignores_a_malformed_wake_trace(
    runtime: tuple[Context, FakeKube, Autoscaler], redis_url: str, spans: InMemorySpanExporter
) -> None:
    """A producer may send any traceparent header: the span is then a root span, no link."""
    ctx, kube, _ = runtime
    await apply(ctx, spec_for(redis_url))
    client = bgq.Client(redis_url)

    def subscribed() -> bool:
        counts = client.redis.pubsub_numsub(WAKE_CHANNEL)
        return bool(counts and int(counts[0][1]) > 0)

    await eventually(subscribed, 10.0, "the operator to subscribe to wake-ups")
    await asyncio.to_thread(
        client.enqueue_with, QUEUE, "app.tasks.noop", headers={"traceparent": "not-a-trace"}
    )
    assert client.redis.get(f"bgq:{{{QUEUE}}}:wake:trace") == "not-a-trace"
    client.close()

    def woken() -> list[Any]:
        return [s for s in spans.get_finished_spans() if s.name == f"bgq.scale {QUEUE}"
                and (s.attributes or {}).get("bgq.trigger") == "wake"]

    (decision, *_) = await eventually(woken, 10.0, "the woken decision span")
    assert decision.parent is None and not decision.links
    assert "bgq.wake.traceparent" not in (decision.attributes or {})
    assert kube.scales() == [1]
