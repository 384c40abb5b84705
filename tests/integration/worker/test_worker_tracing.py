"""bgq.otel end to end: a producer with the SDK's in-memory exporter, a real worker process
(BGQ_OTEL=true, its SDK writing finished spans to a file), a real redis-server.

Proves the parent/child links enqueue -> run -> retry -> run, the consumer span's attributes and
events, that task code's own spans nest under the attempt, and that a worker without
opentelemetry installed runs the same jobs with the same outcomes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import bgq
from bgq import otel
from conftest import QUEUE, SpawnWorker, wait_until, worker_alive


@pytest.fixture
def producer() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert otel.instrument(provider)
    yield provider, exporter
    otel.uninstrument()


def _worker_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _hex(value: int) -> str:
    return f"0x{value:016x}"


def _ctx(span: ReadableSpan | trace.Span) -> trace.SpanContext:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx


def test_enqueue_run_retry_run_is_one_trace_with_linked_spans(
    spawn_worker: SpawnWorker,
    redis_url: str,
    rdb: redis.Redis,
    tmp_path: Path,
    producer: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = producer
    spans_file = tmp_path / "worker-spans.jsonl"
    w = spawn_worker("t", BGQ_OTEL="true", BGQ_TEST_SPANS_FILE=spans_file)
    wait_until(lambda: worker_alive(rdb, w.name), 20, "the worker to start")
    client = bgq.Client(redis_url)
    with provider.get_tracer("test").start_as_current_span("handle request") as request:
        job = client.enqueue(QUEUE, "flaky", "tr", 1)  # attempt 1 fails, attempt 2 succeeds
        inner = client.enqueue(QUEUE, "traced_inside")
    assert client.wait(QUEUE, job.id, timeout=20) == 2
    assert client.wait(QUEUE, inner.id, timeout=20) == "traced"
    client.close()

    enqueues = {
        s.attributes["messaging.message.id"]: s
        for s in exporter.get_finished_spans()
        if s.name == f"bgq.enqueue {QUEUE}" and s.attributes
    }
    produced = enqueues[job.id]
    assert produced.parent is not None
    assert produced.parent.span_id == _ctx(request).span_id
    trace_id = f"0x{_ctx(request).trace_id:032x}"

    def runs() -> list[dict[str, Any]]:
        return [s for s in _worker_spans(spans_file) if s["name"] == "bgq.run flaky"]

    wait_until(lambda: len(runs()) == 2, 10, "two consumer spans in the worker's exporter")
    first, second = sorted(runs(), key=lambda s: s["attributes"]["bgq.attempt"])
    for n, run in enumerate((first, second), 1):
        assert run["kind"] == "SpanKind.CONSUMER"
        assert run["context"]["trace_id"] == trace_id
        assert run["parent_id"] == _hex(_ctx(produced).span_id)  # both attempts under enqueue
        attrs = run["attributes"]
        assert attrs["bgq.attempt"] == n
        assert attrs["messaging.system"] == "bgq"
        assert attrs["messaging.destination.name"] == QUEUE
        assert attrs["messaging.message.id"] == job.id
        assert attrs["bgq.worker.pod"] == w.name
        assert attrs["bgq.queue_wait_seconds"] >= 0
    assert [e["name"] for e in first["events"]] == ["exception", "bgq.retry_scheduled"]
    assert first["status"]["status_code"] == "ERROR"
    assert first["attributes"]["bgq.outcome"] == "retry"
    assert second["events"] == [] and second["attributes"]["bgq.outcome"] == "succeeded"
    # the retry starts after the first attempt ended (what the trace shows as the backoff)
    assert second["start_time"] >= first["end_time"]

    def inside() -> list[dict[str, Any]]:
        return [s for s in _worker_spans(spans_file) if s["name"] == "inside the task"]

    wait_until(inside, 10, "the task's own span")
    (run_inner,) = [s for s in _worker_spans(spans_file) if s["name"] == "bgq.run traced_inside"]
    assert inside()[0]["parent_id"] == run_inner["context"]["span_id"]
    assert run_inner["parent_id"] == _hex(_ctx(enqueues[inner.id]).span_id)


def _blocked_opentelemetry(tmp_path: Path) -> Path:
    """A directory that, first on PYTHONPATH, makes ``import opentelemetry`` fail as if the
    package were not installed."""
    root = tmp_path / "no-otel"
    (root / "opentelemetry").mkdir(parents=True)
    (root / "opentelemetry" / "__init__.py").write_text(
        'raise ImportError("opentelemetry is not installed (blocked by the test)")\n'
    )
    return root


def _workload(client: bgq.Client, key: str) -> list[tuple[Any, int]]:
    jobs = [
        client.enqueue(QUEUE, "echo", {"a": 1}),
        client.enqueue(QUEUE, "flaky", key, 2),
        client.enqueue(QUEUE, "thread_add", 2, b=3),
    ]
    out = []
    for j in jobs:
        result = client.wait(QUEUE, j.id, timeout=30)
        out.append((result, client.get(QUEUE, j.id).attempt))
    return out


def test_worker_without_opentelemetry_runs_the_same_jobs_the_same_way(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis, tmp_path: Path
) -> None:
    client = bgq.Client(redis_url)
    spans_file = tmp_path / "spans.jsonl"
    with_otel = spawn_worker("with", BGQ_OTEL="true", BGQ_TEST_SPANS_FILE=spans_file)
    wait_until(lambda: worker_alive(rdb, with_otel.name), 20, "the traced worker to start")
    traced = _workload(client, "k1")
    with_otel.proc.terminate()
    assert with_otel.proc.wait(20) == 0
    assert _worker_spans(spans_file), "the traced worker made no spans"

    import os

    blocked = _blocked_opentelemetry(tmp_path)
    without = spawn_worker(
        "without", BGQ_OTEL="true",
        PYTHONPATH=os.pathsep.join([str(blocked), str(Path(__file__).parent)]),
    )  # fmt: skip
    wait_until(lambda: worker_alive(rdb, without.name), 20, "the untraced worker to start")
    plain = _workload(client, "k2")
    without.proc.terminate()
    assert without.proc.wait(20) == 0
    client.close()
    assert traced == plain == [({"a": 1}, 1), (3, 3), (5, 1)]
    log = without.logs()
    assert "opentelemetry-api is not installed" in log  # BGQ_OTEL asked, the package is absent
    assert "Traceback" not in log
