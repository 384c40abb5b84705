"""Hooks (middleware): code that runs around every enqueue and every attempt of a job.

Integrations (error trackers, tracing: :mod:`bgq.otel` is built on this) subclass :class:`Hook`,
override the methods they need and register an instance once per process::

    class Timing(bgq.hooks.Hook):
        def before_run(self, attempt: bgq.hooks.Attempt) -> None:
            attempt.state[self] = time.monotonic()

        def after_run(self, attempt: bgq.hooks.Attempt, outcome: str) -> None:
            print(attempt.job.task, outcome, time.monotonic() - attempt.state[self])

    bgq.hooks.register(Timing())

Where each hook runs (docs/observability.md has the full table):

* ``before_enqueue(job)`` in the producer (``Client``, ``AsyncClient``, the HTTP gateway), before
  the envelope is serialised: it may add or change ``job.headers`` (that is how a trace context
  travels), nothing else.
* ``before_run(attempt)`` in the worker, inside the job's context (``bgq.current_job()`` works),
  right before the task function starts. Once per attempt.
* ``on_failure(attempt, exc, retry_in)`` when the attempt raised (or timed out): ``retry_in`` is
  the backoff in seconds when a retry is scheduled, ``None`` when the job goes to the dead
  letters (``on_dead`` follows).
* ``on_dead(attempt, reason, error)`` when this attempt sends the job to the dead letters.
* ``after_run(attempt, outcome)`` exactly once for every attempt that got ``before_run``, last,
  with one of :data:`OUTCOMES`.

Order: ``before_*`` hooks run in registration order, ``on_failure``/``on_dead``/``after_run`` in
reverse order (like nested middleware: the first registered wraps all others).

Errors: a hook that raises is logged (logger ``bgq.hooks``, with the traceback) and skipped; the
remaining hooks still run and the job goes on exactly as without the hook - enqueued, run,
retried or dead-lettered as its own outcome says. A failing hook never loses, fails or retries a
job. Hooks run on the worker's event loop: keep them fast and never block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from bgq.context import JobContext

log = logging.getLogger("bgq.hooks")

OUTCOMES: Final = (
    "succeeded",  # returned; the result is stored
    "retry",  # raised or timed out; a retry is scheduled (on_failure came first)
    "dead",  # raised or timed out with no retry left, or not retryable (on_dead came first)
    "cancelled",  # cancelled on request (bgq cancel / Client.cancel)
    "lost",  # the lease was lost: another worker owns the job now; this run was abandoned
    "handed_back",  # the worker drained (SIGTERM) and handed the job back without a retry
)
"""The values of ``after_run``'s ``outcome``."""


@dataclass(slots=True)
class EnqueueJob:
    """A job about to be enqueued (``before_enqueue``). Only ``headers`` may be changed."""

    queue: str
    """Full queue name ``<namespace>/<name>``."""
    task: str
    job_id: str
    headers: MutableMapping[str, str]
    """The envelope's headers (e.g. ``traceparent``): hooks may add or replace entries."""
    band: int
    """Priority band: 0 high, 1 normal, 2 low."""
    due_ms: int
    """When the job becomes runnable (epoch ms), 0 for now."""


@dataclass(slots=True)
class Attempt:
    """One attempt of a job in a worker, passed to every run hook of that attempt."""

    job: JobContext
    """The job's context (id, task, attempt number, headers, enqueued time, ...)."""
    band: int = 1
    pod: str = ""
    """The worker's pod name (``BGQ_POD_NAME``)."""
    started_ms: int = 0
    """When the attempt started (epoch ms)."""
    state: dict[Any, Any] = field(default_factory=dict)
    """Scratch space shared by the hooks of this attempt; key it by your hook object."""

    @property
    def queue_wait_ms(self) -> int:
        """Enqueue (or retry due, or hand-back) to start, milliseconds (0 when unknown)."""
        if not self.job.enqueued_ms or not self.started_ms:
            return 0
        return max(0, self.started_ms - self.job.enqueued_ms)


class Hook:
    """Base class of hooks: every method is a no-op; override the ones you need."""

    def before_enqueue(self, job: EnqueueJob) -> None:
        """Before a job is enqueued (producer side); may edit ``job.headers``."""

    def before_run(self, attempt: Attempt) -> None:
        """Before the task function of an attempt starts (worker side, in the job's context)."""

    def on_failure(self, attempt: Attempt, exc: BaseException, retry_in: float | None) -> None:
        """The attempt raised or timed out; ``retry_in`` seconds to the retry, or ``None``."""

    def on_dead(self, attempt: Attempt, reason: str, error: str) -> None:
        """The job goes to the dead letters (``reason`` as in ``bgq dead``)."""

    def after_run(self, attempt: Attempt, outcome: str) -> None:
        """Last call of every attempt that had ``before_run``; ``outcome`` in OUTCOMES."""


class HookRegistry:
    """The hooks of this process, and the error-isolating dispatch the client and worker call.

    ``if registry:`` is the cheap check callers use to skip all hook work when none is set.
    """

    def __init__(self) -> None:
        self._hooks: tuple[Hook, ...] = ()
        self.errors = 0
        """Hook calls that raised (they are logged and skipped)."""

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def __iter__(self) -> Iterator[Hook]:
        return iter(self._hooks)

    def register(self, hook: Hook) -> Hook:
        """Add ``hook`` (after the ones already registered); registering twice is a no-op."""
        if not isinstance(hook, Hook):
            raise TypeError(f"hooks must subclass bgq.hooks.Hook, got {type(hook).__name__}")
        if hook not in self._hooks:
            self._hooks = (*self._hooks, hook)
        return hook

    def unregister(self, hook: Hook) -> None:
        """Remove ``hook`` (no error when it is not registered)."""
        self._hooks = tuple(h for h in self._hooks if h is not hook)

    def clear(self) -> None:
        """Remove every hook (tests)."""
        self._hooks = ()

    def _call(self, hooks: tuple[Hook, ...], name: str, *args: Any) -> None:
        for hook in hooks:
            method: Callable[..., None] = getattr(hook, name)
            try:
                method(*args)
            except Exception:  # a hook must never change what happens to the job
                self.errors += 1
                log.exception("bgq hook %s.%s failed (ignored)", type(hook).__name__, name)

    def before_enqueue(self, job: EnqueueJob) -> None:
        """Run every ``before_enqueue`` (registration order)."""
        self._call(self._hooks, "before_enqueue", job)

    def before_run(self, attempt: Attempt) -> None:
        """Run every ``before_run`` (registration order)."""
        self._call(self._hooks, "before_run", attempt)

    def on_failure(self, attempt: Attempt, exc: BaseException, retry_in: float | None) -> None:
        """Run every ``on_failure`` (reverse order)."""
        self._call(self._hooks[::-1], "on_failure", attempt, exc, retry_in)

    def on_dead(self, attempt: Attempt, reason: str, error: str) -> None:
        """Run every ``on_dead`` (reverse order)."""
        self._call(self._hooks[::-1], "on_dead", attempt, reason, error)

    def after_run(self, attempt: Attempt, outcome: str) -> None:
        """Run every ``after_run`` (reverse order)."""
        self._call(self._hooks[::-1], "after_run", attempt, outcome)


HOOKS: Final = HookRegistry()
"""The process-wide registry the client, the gateway and the worker use."""


def register(hook: Hook) -> Hook:
    """Register ``hook`` process-wide (``bgq.hooks.HOOKS``); returns it."""
    return HOOKS.register(hook)


def unregister(hook: Hook) -> None:
    """Remove ``hook`` from the process-wide registry."""
    HOOKS.unregister(hook)


__all__ = [
    "HOOKS",
    "OUTCOMES",
    "Attempt",
    "EnqueueJob",
    "Hook",
    "HookRegistry",
    "register",
    "unregister",
]
