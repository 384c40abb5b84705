"""The running job's context, visible to task code through :func:`current_job`.

Job code uses it to learn its id and attempt, to checkpoint when the worker is shutting down
(``shutdown_requested`` flag, or ``await wait_for_shutdown()``), and to stop cooperatively when
its timeout passed or it was cancelled (``cancel_requested``; relevant to thread tasks, which
cannot be interrupted). Logs carry the job id and trace id through the same context variable.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from bgq.errors import BgqError
from bgq.progress import encode_checkpoint, encode_progress

if TYPE_CHECKING:  # asyncio loads with the worker, not with ``import bgq``
    import asyncio
    from collections.abc import Callable


class ShutdownSignal:
    """Set once when the worker starts draining; checkable from any thread, awaitable on the
    worker's loop."""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._event: asyncio.Event | None = None

    def bind(self) -> None:
        """Create the awaitable half on the running loop (the worker calls this at start)."""
        import asyncio

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


_UPDATES_LOCK = threading.Lock()
"""Guards every context's pending progress/checkpoint pair (a job's thread writes it, the
event loop takes it). One lock for all jobs: the calls are rare and short, and a lock per
context cost an allocation on every job's start."""


class JobContext:
    """What a running job knows about itself (``bgq.current_job()``)."""

    __slots__ = (
        "_cancelled",
        "_notify",
        "_pending",
        "attempt",
        "enqueued_ms",
        "headers",
        "job_id",
        "last_checkpoint",
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
        *,
        last_checkpoint: Any = None,
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
        self.last_checkpoint = last_checkpoint
        """The job's last saved checkpoint: the previous attempt's at start (None when there
        is none), then whatever this attempt last passed to :meth:`checkpoint`."""
        self._pending: tuple[str, str] = ("", "")
        self._notify: Callable[[], None] | None = None
        """Called after each progress/checkpoint report (a cpu_bound child forwards them)."""

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

    def progress(self, fraction: float, detail: str = "") -> None:
        """Report how far the job is (0.0 .. 1.0) with an optional one-line ``detail``.

        Cheap: it records the latest value only; the worker stores it with its next lease
        renewal (coalesced, no extra Redis round trip per call). ``Client.get``, ``bgq job``,
        the gateway and ``wait(..., on_progress=...)`` show it. Raises ConfigError on bad input.
        """
        text = encode_progress(fraction, detail, int(time.time() * 1000))
        with _UPDATES_LOCK:
            self._pending = (text, self._pending[1])
        if self._notify is not None:
            self._notify()

    def checkpoint(self, data: Any) -> None:
        """Save a resume point (JSON data: an offset, a cursor, ids done) for a later attempt.

        Stored like :meth:`progress`, and always before the worker hands the job back on a
        drain; the next attempt (after a drain hand-back or a retry) finds it in
        :attr:`last_checkpoint`. Raises PayloadError when ``data`` is not JSON or too large.
        """
        text = encode_checkpoint(data)
        with _UPDATES_LOCK:
            self._pending = (self._pending[0], text)
            self.last_checkpoint = data
        if self._notify is not None:
            self._notify()

    @property
    def has_updates(self) -> bool:
        """True when progress or a checkpoint waits to be stored (worker internal)."""
        return self._pending != ("", "")

    def take_updates(self) -> tuple[str, str]:
        """(progress JSON, checkpoint JSON) not yet stored, '' for none; clears them (worker
        internal: the lease keeper sends them with the renewal)."""
        with _UPDATES_LOCK:
            pending, self._pending = self._pending, ("", "")
        return pending

    def put_updates(self, progress: str, checkpoint: str) -> None:
        """Take reports made elsewhere (a cpu_bound task's child process): newer than what
        is pending here, '' for none (worker internal)."""
        with _UPDATES_LOCK:
            self._pending = (progress or self._pending[0], checkpoint or self._pending[1])

    def restore_updates(self, pending: tuple[str, str]) -> None:
        """Put back updates whose renewal failed, unless newer ones arrived (worker internal)."""
        with _UPDATES_LOCK:
            self._pending = (self._pending[0] or pending[0], self._pending[1] or pending[1])

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
