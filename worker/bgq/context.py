"""The running job's context, visible to task code through :func:`current_job`.

Job code uses it to learn its id and attempt, to checkpoint when the worker is shutting down
(``shutdown_requested`` flag, or ``await wait_for_shutdown()``), and to stop cooperatively when
its timeout passed or it was cancelled (``cancel_requested``; relevant to thread tasks, which
cannot be interrupted). Logs carry the job id and trace id through the same context variable.
"""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar

from bgq.errors import BgqError


class ShutdownSignal:
    """Set once when the worker starts draining; checkable from any thread, awaitable on the
    worker's loop."""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._event: asyncio.Event | None = None

    def bind(self) -> None:
        """Create the awaitable half on the running loop (the worker calls this at start)."""
        self._event = asyncio.Event()
        if self._flag.is_set():
            self._event.set()

    def set(self) -> None:
        """Announce the shutdown (call on the worker's loop)."""
        self._flag.set()
        if self._event is not None:
            self._event.set()

    @property
    def is_set(self) -> bool:
        """True once shutdown was requested."""
        return self._flag.is_set()

    async def wait(self) -> None:
        """Return when shutdown is requested (await it on the worker's loop only)."""
        if self._event is None:
            self.bind()
        assert self._event is not None
        await self._event.wait()

    def wait_blocking(self, timeout: float | None = None) -> bool:
        """For thread tasks: block until shutdown is requested or ``timeout`` passes."""
        return self._flag.wait(timeout)


class JobContext:
    """What a running job knows about itself (``bgq.current_job()``)."""

    __slots__ = (
        "_cancelled",
        "attempt",
        "enqueued_ms",
        "headers",
        "job_id",
        "max_retries",
        "queue",
        "shutdown",
        "task",
    )

    def __init__(  # noqa: PLR0917 - built once per job by the worker
        self,
        job_id: str,
        queue: str,
        task: str,
        attempt: int,
        max_retries: int,
        headers: dict[str, str],
        enqueued_ms: int,
        shutdown: ShutdownSignal | None = None,
    ) -> None:
        self.job_id = job_id
        self.queue = queue
        self.task = task
        self.attempt = attempt
        """1 for the first try, 2 for the first retry, ..."""
        self.max_retries = max_retries
        self.headers = headers
        self.enqueued_ms = enqueued_ms
        self.shutdown = shutdown if shutdown is not None else ShutdownSignal()
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<JobContext {self.task} {self.job_id} attempt {self.attempt}>"

    @property
    def shutdown_requested(self) -> bool:
        """True once the worker is draining: checkpoint and finish, or return early."""
        return self.shutdown.is_set

    async def wait_for_shutdown(self) -> None:
        """Return when the worker starts draining (async tasks)."""
        await self.shutdown.wait()

    @property
    def cancel_requested(self) -> bool:
        """True when the job timed out, was cancelled, or its lease was lost; thread tasks
        (which cannot be interrupted) should check it and stop promptly."""
        return self._cancelled

    def request_cancel(self) -> None:
        """Set :attr:`cancel_requested` (worker internal)."""
        self._cancelled = True

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` the producer sent ("" when none)."""
        return self.headers.get("traceparent", "")

    @property
    def trace_id(self) -> str:
        """The trace id part of ``traceparent`` ("" when none)."""
        parts = self.traceparent.split("-")
        return parts[1] if len(parts) == 4 else ""

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now goes to the dead letters rather than a retry."""
        return self.attempt > self.max_retries


_current: ContextVar[JobContext | None] = ContextVar("bgq_current_job", default=None)


def current_job() -> JobContext:
    """The context of the job running in this task/thread; raises outside a job."""
    ctx = _current.get()
    if ctx is None:
        raise BgqError("current_job() called outside a running bgq job")
    return ctx


def current_job_or_none() -> JobContext | None:
    """Like :func:`current_job` but ``None`` outside a job."""
    return _current.get()


def current_traceparent() -> str | None:
    """The running job's traceparent, so jobs enqueued from a job continue its trace."""
    ctx = _current.get()
    return ctx.traceparent or None if ctx is not None else None


def set_current(ctx: JobContext | None) -> None:
    """Install ``ctx`` in this context (worker internal)."""
    _current.set(ctx)


__all__ = [
    "JobContext",
    "ShutdownSignal",
    "current_job",
    "current_job_or_none",
    "current_traceparent",
    "set_current",
]
