"""OpenTelemetry spans for bgq, built on :mod:`bgq.hooks` (``pip install bgq[otel]``).

Only ``opentelemetry-api`` is imported, and only here: without it :func:`instrument` returns
False and bgq runs exactly as before. Spans go wherever the process's tracer provider sends them
(configure the SDK and an exporter yourself, or run under ``opentelemetry-instrument``).

* Producer: span ``bgq.enqueue <queue>`` (kind PRODUCER) per enqueued job. Its parent is the
  ``traceparent`` header given to enqueue, else the active span; its context is written into
  the envelope's ``traceparent``/``tracestate`` headers.
* Consumer: span ``bgq.run <task>`` (kind CONSUMER) per attempt, child of the producer span, so
  every attempt (first run, retries, the run after a drain hand-back) hangs under one enqueue.
  Attributes follow the OTel messaging conventions (``messaging.system=bgq``, destination,
  message id, ...) plus ``bgq.attempt``, ``bgq.band``, ``bgq.worker.pod`` and
  ``bgq.queue_wait_seconds`` (enqueue or retry-due to start: why the job waited). Span events:
  ``bgq.retry_scheduled``, ``bgq.dead_lettered``, ``bgq.lease_lost``, ``bgq.cancelled``,
  ``bgq.handed_back``; the exception of a failed attempt is recorded on the span.

Workers turn it on with ``BGQ_OTEL=true`` (the operator sets nothing; add it to
``spec.worker.env``), producers call :func:`instrument` once.
"""

from __future__ import annotations

import logging
from typing import Any

from bgq.hooks import HOOKS, Attempt, EnqueueJob, Hook

log = logging.getLogger("bgq.otel")

try:  # the optional extra: everything below degrades to "not available"
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised by the no-opentelemetry test in a subprocess
    AVAILABLE = False

TRACER_NAME = "bgq"
SYSTEM = "bgq"
CONSUMER_GROUP = "workers"
_AFTER_EVENTS = {
    "lost": "bgq.lease_lost",
    "cancelled": "bgq.cancelled",
    "handed_back": "bgq.handed_back",
}


class TracingHook(Hook):
    """The hook that makes the spans (registered by :func:`instrument`)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)

    def before_enqueue(self, job: EnqueueJob) -> None:
        """Open and close the producer span; put its context into the job's headers."""
        parent = propagate.extract(job.headers) if "traceparent" in job.headers else None
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "enqueue",
            "messaging.destination.name": job.queue,
            "messaging.message.id": job.job_id,
            "bgq.task": job.task,
            "bgq.band": job.band,
        }
        if job.due_ms:
            attributes["bgq.due_ms"] = job.due_ms
        span = self.tracer.start_span(
            f"bgq.enqueue {job.queue}", context=parent, kind=SpanKind.PRODUCER,
            attributes=attributes,
        )  # fmt: skip
        try:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            if carrier.get("traceparent"):  # a no-op provider injects nothing: keep the header
                job.headers.pop("tracestate", None)
                job.headers.update(carrier)
        finally:
            span.end()

    def before_run(self, attempt: Attempt) -> None:
        """Open the consumer span of this attempt and make it current in the job's context."""
        job = attempt.job
        parent = propagate.extract(job.headers)
        wait_s = attempt.queue_wait_ms / 1000
        span = self.tracer.start_span(
            f"bgq.run {job.task}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "run",
                "messaging.destination.name": job.queue,
                "messaging.consumer.group.name": CONSUMER_GROUP,
                "messaging.message.id": job.job_id,
                "bgq.task": job.task,
                "bgq.attempt": job.attempt,
                "bgq.band": attempt.band,
                "bgq.worker.pod": attempt.pod,
                "bgq.queue_wait_seconds": wait_s,
            },
            start_time=attempt.started_ms * 1_000_000 if attempt.started_ms else None,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        attempt.state[self] = (span, token)

    def on_failure(self, attempt: Attempt, exc: BaseException, retry_in: float | None) -> None:
        """Record the exception; note the retry if one is scheduled."""
        found = attempt.state.get(self)
        if found is None:
            return
        span = found[0]
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        if retry_in is not None:
            span.add_event(
                "bgq.retry_scheduled",
                {
                    "bgq.retry_in_seconds": float(retry_in),
                    "bgq.next_attempt": attempt.job.attempt + 1,
                },
            )

    def on_dead(self, attempt: Attempt, reason: str, error: str) -> None:
        """Note the dead letter on the span."""
        found = attempt.state.get(self)
        if found is not None:
            found[0].add_event("bgq.dead_lettered", {"bgq.dead.reason": reason, "bgq.error": error})

    def after_run(self, attempt: Attempt, outcome: str) -> None:
        """Close the consumer span (an event for lost / cancelled / handed back)."""
        found = attempt.state.pop(self, None)
        if found is None:
            return
        span, token = found
        event = _AFTER_EVENTS.get(outcome)
        if event is not None:
            span.add_event(event)
        span.set_attribute("bgq.outcome", outcome)
        span.end()
        try:
            otel_context.detach(token)
        except Exception:  # after_run ran in another context than before_run: nothing to undo
            log.debug("consumer span context not detached (different context)")


_INSTALLED: list[TracingHook] = []
"""The registered hook, if any (a list, so no ``global`` statement is needed)."""


def instrument(tracer_provider: Any = None) -> bool:
    """Register the tracing hook process-wide; False (and nothing changes) without
    ``opentelemetry-api``. Calling it again replaces the provider."""
    if not AVAILABLE:
        log.warning(
            "bgq tracing requested but opentelemetry-api is not installed "
            "(pip install 'bgq[otel]'): running without spans"
        )
        return False
    uninstrument()
    hook = TracingHook(tracer_provider)
    _INSTALLED.append(hook)
    HOOKS.register(hook)
    return True


def uninstrument() -> None:
    """Remove the tracing hook (no error when it is not registered)."""
    while _INSTALLED:
        HOOKS.unregister(_INSTALLED.pop())


__all__ = ["AVAILABLE", "TracingHook", "instrument", "uninstrument"]
