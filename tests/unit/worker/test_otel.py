"""bgq.otel's spans, driven through the hook registry with the OTel SDK's in-memory exporter.

The end-to-end proof (real redis-server, real worker process) is
tests/integration/worker/test_worker_tracing.py; this pins names, kinds, attributes, events.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

import bgq
from bgq import otel
from bgq.context import JobContext
from bgq.hooks import HOOKS, Attempt


@pytest.fixture
def provider() -> TracerProvider:
    return TracerProvider()


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert otel.instrument(provider)
    yield exporter
    otel.uninstrument()
    assert not HOOKS


def _enqueue(headers: dict[str, str] | None = None) -> bgq.Envelope:
    client = bgq.Client("redis://127.0.0.1:1/0", namespace="ns")
    _, argv = client._core.enqueue_call("q", bgq.JobSpec("app.work", headers=headers))
    return bgq.Envelope.model_validate_json(argv[1])


def _run(env: bgq.Envelope, attempt: int, outcome: str, exc: Exception | None = None) -> None:
    ctx = JobContext(env.id, "ns/q", env.task, attempt, 1, dict(env.headers), env.enqueued_at)
    a = Attempt(ctx, band=1, pod="pod-1", started_ms=env.enqueued_at + 1500)
    HOOKS.before_run(a)
    if exc is not None:
        HOOKS.on_failure(a, exc, 0.5 if outcome == "retry" else None)
    if outcome == "dead":
        HOOKS.on_dead(a, "retries-exhausted", "ValueError: boom")
    HOOKS.after_run(a, outcome)


def _ctx(span: ReadableSpan) -> SpanContext:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


def test_enqueue_makes_a_producer_span_and_puts_its_context_in_the_envelope(
    spans: InMemorySpanExporter,
) -> None:
    env = _enqueue()
    producer = _one(list(spans.get_finished_spans()), "bgq.enqueue ns/q")
    assert producer.kind is SpanKind.PRODUCER
    ctx = _ctx(producer)
    assert env.headers["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    attrs = dict(producer.attributes or {})
    assert attrs["messaging.system"] == "bgq"
    assert attrs["messaging.destination.name"] == "ns/q"
    assert attrs["messaging.message.id"] == env.id


def test_enqueue_continues_the_active_span_or_a_given_traceparent(
    spans: InMemorySpanExporter, provider: TracerProvider
) -> None:
    tracer = trace.get_tracer("test", tracer_provider=provider)
    with tracer.start_as_current_span("request") as request:
        _enqueue()
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    _enqueue({"traceparent": given})
    first, second = [s for s in spans.get_finished_spans() if s.name.startswith("bgq.enqueue")]
    assert first.parent is not None
    assert first.parent.span_id == request.get_span_context().span_id
    assert second.parent is not None and f"{second.parent.span_id:016x}" == "b7ad6b7169203331"
    assert f"{_ctx(second).trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"


def test_attempts_are_consumer_children_of_the_producer_with_events(
    spans: InMemorySpanExporter,
) -> None:
    env = _enqueue()
    _run(env, 1, "retry", ValueError("boom"))
    _run(env, 2, "dead", ValueError("boom"))
    finished = list(spans.get_finished_spans())
    producer = _one(finished, "bgq.enqueue ns/q")
    runs = [s for s in finished if s.name == "bgq.run app.work"]
    assert len(runs) == 2
    for n, run in enumerate(runs, 1):
        assert run.kind is SpanKind.CONSUMER
        assert run.parent is not None and run.parent.span_id == _ctx(producer).span_id
        assert _ctx(run).trace_id == _ctx(producer).trace_id
        attrs = dict(run.attributes or {})
        assert attrs["bgq.attempt"] == n
        assert attrs["bgq.queue_wait_seconds"] == 1.5
        assert attrs["bgq.worker.pod"] == "pod-1"
        assert attrs["messaging.operation.type"] == "process"
        assert run.status.status_code is StatusCode.ERROR
    assert [e.name for e in runs[0].events] == ["exception", "bgq.retry_scheduled"]
    assert [e.name for e in runs[1].events] == ["exception", "bgq.dead_lettered"]
    assert dict(runs[1].events[1].attributes or {})["bgq.dead.reason"] == "retries-exhausted"


@pytest.mark.parametrize(
    ("outcome", "event"),
    [
        ("lost", "bgq.lease_lost"),
        ("cancelled", "bgq.cancelled"),
        ("handed_back", "bgq.handed_back"),
    ],
)
def test_interrupted_attempts_end_with_an_event(
    spans: InMemorySpanExporter, outcome: str, event: str
) -> None:
    _run(_enqueue(), 1, outcome)
    run = _one(list(spans.get_finished_spans()), "bgq.run app.work")
    assert [e.name for e in run.events] == [event]
    assert dict(run.attributes or {})["bgq.outcome"] == outcome


def test_span_is_current_inside_the_job_and_restored_after(spans: InMemorySpanExporter) -> None:
    env = _enqueue()
    ctx = JobContext(env.id, "ns/q", env.task, 1, 1, dict(env.headers), env.enqueued_at)
    a = Attempt(ctx, started_ms=env.enqueued_at)
    before = trace.get_current_span()
    HOOKS.before_run(a)
    inside = trace.get_current_span()
    HOOKS.after_run(a, "succeeded")
    assert inside.get_span_context().span_id != before.get_span_context().span_id
    assert trace.get_current_span() is before
