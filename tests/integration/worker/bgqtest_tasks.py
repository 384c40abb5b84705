"""Tasks used by the worker integration tests (imported by in-process and subprocess workers).

Tasks that must be observable from outside record events with RPUSH on ``BGQ_TEST_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import redis

import bgq

_clients: dict[str, redis.Redis] = {}


def _r() -> redis.Redis:
    url = os.environ["BGQ_TEST_REDIS_URL"]
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, decode_responses=True)
    return _clients[url]


def note(key: str, value: str) -> None:
    """Record an event on list ``bgqtest:<key>``."""
    _r().rpush(f"bgqtest:{key}", value)


@bgq.task
async def echo(x: Any) -> Any:
    return x


@bgq.task
async def nothing() -> None:
    return None


@bgq.task(retries=0)
async def sleepy(seconds: float, key: str) -> str:
    """Record start, sleep, record done (in a thread: the sync redis client)."""
    job = bgq.current_job()
    await asyncio.to_thread(note, key, f"start:{job.job_id}:{os.getpid()}")
    await asyncio.sleep(seconds)
    await asyncio.to_thread(note, key, f"done:{job.job_id}:{os.getpid()}")
    return "slept"


@bgq.task(retries=0)
async def long_first_run(first_seconds: float, key: str) -> str:
    """Like ``sleepy``, but only the first run of the job is long (later runs, after a crash,
    take 0.2 s): a crash test then does not depend on how fast the next worker starts."""
    job = bgq.current_job()
    entry = f"start:{job.job_id}:{os.getpid()}"
    first = await asyncio.to_thread(_r().rpush, f"bgqtest:{key}", entry)
    await asyncio.sleep(first_seconds if first == 1 else 0.2)
    await asyncio.to_thread(note, key, f"done:{job.job_id}:{os.getpid()}")
    return "slept"


@bgq.task
async def checkpointing(key: str) -> str:
    """Runs until shutdown is requested, then returns (a cooperative job)."""
    job = bgq.current_job()
    await asyncio.to_thread(note, key, f"start:{job.job_id}")
    await job.wait_for_shutdown()
    await asyncio.to_thread(note, key, f"checkpoint:{job.job_id}")
    return "checkpointed"


@bgq.task(retries=3)
async def flaky(key: str, failures: int) -> int:
    """Fails the first ``failures`` attempts; records each attempt's time."""
    job = bgq.current_job()
    await asyncio.to_thread(note, key, f"{job.attempt}:{time.time()}")
    if job.attempt <= failures:
        raise RuntimeError(f"attempt {job.attempt} fails")
    return job.attempt


class PermanentError(Exception):
    pass


@bgq.task(retries=5, retry_on=(RuntimeError,))
async def picky() -> None:
    raise PermanentError("not worth retrying")


@bgq.task(retries=1, timeout=0.3)
async def slow_async(key: str) -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        await asyncio.to_thread(note, key, "cancelled")
        raise


@bgq.task(retries=0, timeout=0.5, cpu_bound=True)
def cpu_forever(key: str) -> None:
    note(key, f"pid:{os.getpid()}")
    while True:
        pass


@bgq.task(cpu_bound=True)
def cpu_square(x: int) -> int:
    total = 0
    for _ in range(10_000):
        total += 1
    return x * x + (total - total)


@bgq.task
def thread_add(a: int, b: int = 0) -> int:
    assert bgq.current_job().job_id
    return a + b


@bgq.task
async def kill_my_worker(key: str) -> None:
    """Poison pill: kills the worker process running it."""
    await asyncio.to_thread(note, key, f"run:{os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)


@bgq.task
async def returns_object() -> object:
    return object()


@bgq.task
async def pause(ms: float, x: Any) -> Any:
    await asyncio.sleep(ms / 1000)
    return x


@bgq.task(retries=0, timeout=0.3)
def thread_overrun(key: str) -> str:
    """A thread task past its timeout: it is told via cancel_requested and stops."""
    job = bgq.current_job()
    deadline = time.monotonic() + 10
    while not job.cancel_requested and time.monotonic() < deadline:
        time.sleep(0.01)
    note(key, f"cancel_requested:{job.cancel_requested}")
    return "late"


@bgq.task(retries=2)
async def retry_later(key: str) -> int:
    job = bgq.current_job()
    await asyncio.to_thread(note, key, f"{job.attempt}:{time.time()}")
    if job.attempt == 1:
        raise bgq.Retry(delay=0.5)
    return job.attempt


@bgq.task(retries=0)
async def stubborn(key: str) -> str:
    """Ignores cancellation (bad practice): the drain must still hand it back."""
    await asyncio.to_thread(note, key, "start")
    for _ in range(2):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.to_thread(note, key, "ignored-cancel")
    return "finished"


@bgq.task(retries=0)
def thread_sleep(seconds: float, key: str) -> str:
    """A thread task that ignores everything and blocks its thread."""
    note(key, "start")
    time.sleep(seconds)
    return "woke"


# --- observability (test_worker_tracing.py, test_worker_progress.py) -------------------------


@bgq.task(retries=0)
async def resumable(key: str, steps: int, step_seconds: float) -> int:
    """Works through ``steps`` steps, reporting progress and a checkpoint after each; starts
    from the last checkpoint. Returns the step it started from."""
    job = bgq.current_job()
    start = int((job.last_checkpoint or {}).get("done", 0))
    await asyncio.to_thread(note, key, f"attempt:{job.attempt}:from:{start}")
    for i in range(start, steps):
        await asyncio.sleep(step_seconds)
        job.progress((i + 1) / steps, f"step {i + 1} of {steps}")
        job.checkpoint({"done": i + 1})
    return start


@bgq.task
async def traced_inside() -> str:
    """Makes a span of its own: it must nest under the attempt's consumer span."""
    from opentelemetry import trace

    with trace.get_tracer("bgqtest").start_as_current_span("inside the task"):
        return "traced"


if os.environ.get("BGQ_TEST_SPANS_FILE"):  # the worker's SDK: every finished span, one per line
    from opentelemetry import trace as _trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    def _one_line(span: ReadableSpan) -> str:
        return str(span.to_json(indent=None)) + "\n"

    _provider = TracerProvider()
    _provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(
                out=open(os.environ["BGQ_TEST_SPANS_FILE"], "a"),  # noqa: SIM115 - process-long
                formatter=_one_line,
            )
        )
    )
    _trace.set_tracer_provider(_provider)


@bgq.task(retries=0, cpu_bound=True)
def resumable_cpu(key: str, steps: int, step_seconds: float) -> int:
    """``resumable`` as a cpu_bound task: it runs in a child process, whose progress and
    checkpoint reports must reach the job record like an async task's."""
    job = bgq.current_job()
    start = int((job.last_checkpoint or {}).get("done", 0))
    note(key, f"attempt:{job.attempt}:from:{start}")
    for i in range(start, steps):
        time.sleep(step_seconds)
        job.progress((i + 1) / steps, f"step {i + 1} of {steps}")
        job.checkpoint({"done": i + 1})
    return start
