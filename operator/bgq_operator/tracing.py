"""An OpenTelemetry span per scaling decision, when ``opentelemetry-api`` is installed.

Span ``bgq.scale <namespace>/<name>`` (kind INTERNAL) with what the decision saw and chose:
``bgq.trigger`` (``wake``: the first job into an idle queue published a wake-up; ``poll``),
``bgq.demand``, ``bgq.current_replicas``, ``bgq.desired_replicas``, ``bgq.bound_by``,
``bgq.reason``. Its start is when the tick began, so the span's length is the decision latency
(``bgq_operator_decision_seconds``). Without the package, or without an SDK configured,
:func:`record_decision` costs a dictionary lookup and does nothing.

A decision triggered by a wake-up is tied to the enqueue that published it: the enqueue script
stores the job's ``traceparent`` (its producer span ``bgq.enqueue``) in ``P:wake:trace`` when
it publishes on ``bgq:wake`` (docs/protocol.md, section 3). The decision span is then a child
of that producer span, so the trace of the job that woke the queue shows the scale decision
it waited for, and it carries a span Link to it (``bgq.link=wake``), the OTel way of saying
"caused by this message" that survives a backend that shows only one trace at a time.
"""

from __future__ import annotations

from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _TRACER: Any = trace.get_tracer("bgq_operator")
    _PROPAGATOR: Any = TraceContextTextMapPropagator()
except ImportError:  # pragma: no cover - the operator image may leave the extra out
    _TRACER = None
    _PROPAGATOR = None


def record_decision(
    queue: str,
    *,
    started_ns: int,
    trigger: str,
    demand: int | None,
    current: int,
    desired: int,
    bound_by: str,
    reason: str,
    wake_traceparent: str | None = None,
) -> None:
    """Emit the decision's span (start ``started_ns``, epoch nanoseconds; end now).

    ``wake_traceparent``: the W3C traceparent of the enqueue whose wake-up triggered this
    decision; the span becomes its child and links to it. A malformed value is ignored (the
    span is then a root span without a link).
    """
    if _TRACER is None:
        return
    attributes: dict[str, Any] = {
        "bgq.queue": queue,
        "bgq.trigger": trigger,
        "bgq.current_replicas": current,
        "bgq.desired_replicas": desired,
        "bgq.bound_by": bound_by,
        "bgq.reason": reason,
    }
    if demand is not None:
        attributes["bgq.demand"] = demand
    parent, links = _wake_context(wake_traceparent)
    if links:
        attributes["bgq.wake.traceparent"] = str(wake_traceparent)
    span = _TRACER.start_span(
        f"bgq.scale {queue}", context=parent, links=links, start_time=started_ns,
        attributes=attributes,
    )  # fmt: skip
    span.end()


def _wake_context(traceparent: str | None) -> tuple[Any, list[Any]]:
    """(parent context, [Link]) of a wake-up's traceparent; (None, []) if absent or invalid."""
    if not traceparent:
        return None, []
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(ctx).get_span_context()
    if not span_context.is_valid:
        return None, []
    return ctx, [trace.Link(span_context, {"bgq.link": "wake"})]


__all__ = ["record_decision"]
