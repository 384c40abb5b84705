"""The pure decision how one run of a job ends: ``decide_outcome(...) -> SettleRecord | None``.

Every policy of the worker about a finished run lives here and nowhere else: retry or dead
letter, backoff delay, timeouts, cancellation, hand-back at the drain deadline, results that
cannot be stored. It does no I/O and reads no clock or environment (``now_ms`` and the random
source are arguments), so it is table-tested without Redis (tests/unit/worker).
"""

from __future__ import annotations

import json
import random
import traceback
from typing import NamedTuple

from bgq._calls import CANCELLED, RELEASE, Dead, Ok, RetryAt, SettleRecord, StopReason
from bgq.backoff import backoff_seconds
from bgq.errors import JobTimeout, Retry

_dump_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class RetryPolicy(NamedTuple):
    """The worker-wide retry settings (``BGQ_BACKOFF_*``)."""

    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 300.0


class JobFacts(NamedTuple):
    """What the decision needs to know about the job and its task."""

    task: str
    attempt: int
    """1 for the first run."""
    max_retries: int
    timeout: float
    retry_on: tuple[type[BaseException], ...] = ()
    interruptible: bool = True
    """False for thread tasks: a timed-out thread is abandoned, not stopped."""


class Returned(NamedTuple):
    """The task returned ``value``."""

    value: object


class Raised(NamedTuple):
    """The task raised ``error``; ``remote_traceback`` is set for child-process tasks."""

    error: BaseException
    remote_traceback: str | None = None


class Stopped(NamedTuple):
    """The worker stopped the run on purpose."""

    reason: StopReason


RunResult = Returned | Raised | Stopped

RETURNED_NONE = Returned(None)
"""What the executor records for a task that returned None (most do): one shared value."""
OK_NULL = Ok("null")
""":func:`decide_outcome`'s record for :data:`RETURNED_NONE` (the executor's fast path)."""


def decide_outcome(
    job: JobFacts,
    policy: RetryPolicy,
    result: RunResult,
    now_ms: int,
    rng: random.Random | None = None,
) -> SettleRecord | None:
    """The settle record for this run, or None when the job must be forgotten (lease lost:
    another worker owns it now and any record would be rejected by the fencing anyway).

    * returned: ``Ok`` with the JSON result, or ``Dead("result-not-serialisable")``;
    * raised :class:`bgq.Retry`, :class:`bgq.JobTimeout` or a type in the task's ``retry_on``:
      ``RetryAt`` (explicit ``Retry(delay)`` or full-jitter backoff) while
      ``attempt <= max_retries``, else ``Dead("retries-exhausted")``;
    * raised anything else: ``Dead("not-retryable")``;
    * stopped by timeout: handled as a raised :class:`JobTimeout`;
    * stopped by a cancel request: ``Cancelled``; by the drain deadline: ``Release`` (no retry
      consumed); lease lost: None.
    """
    if result is RETURNED_NONE:
        return OK_NULL
    if isinstance(result, Returned):
        try:
            text = "null" if result.value is None else _dump_json(result.value)
        except (TypeError, ValueError) as exc:
            error = f"the result of task {job.task!r} is not JSON-serialisable: {exc}"
            return Dead("result-not-serialisable", error, "")
        return Ok(text)
    if isinstance(result, Stopped):
        if result.reason is StopReason.CANCEL:
            return CANCELLED
        if result.reason is StopReason.DRAIN:
            return RELEASE
        if result.reason is StopReason.LOST:
            return None
        message = f"task {job.task!r} exceeded its timeout of {job.timeout} s"
        if not job.interruptible:
            message += (
                " (its thread was abandoned; it can stop early by checking "
                "current_job().cancel_requested)"
            )
        result = Raised(JobTimeout(message))
    err = result.error
    error = f"{type(err).__name__}: {err}"
    tb = result.remote_traceback or "".join(traceback.format_exception(err))
    retryable = isinstance(err, (Retry, JobTimeout, *job.retry_on))
    if not retryable:
        return Dead("not-retryable", error, tb)
    if job.attempt > job.max_retries:
        return Dead("retries-exhausted", error, tb)
    if isinstance(err, Retry) and err.delay is not None:
        delay = err.delay
    else:
        delay = backoff_seconds(
            job.attempt, policy.backoff_base_seconds, policy.backoff_max_seconds, rng
        )
    return RetryAt(now_ms + int(delay * 1000), error, tb)


def malformed(reason: str, error: str) -> Dead:
    """The record for a job that cannot run at all (bad envelope, unknown task)."""
    return Dead(reason, error, "")


__all__ = [
    "OK_NULL",
    "RETURNED_NONE",
    "JobFacts",
    "Raised",
    "RetryPolicy",
    "Returned",
    "RunResult",
    "Stopped",
    "decide_outcome",
    "malformed",
]
