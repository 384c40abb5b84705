# ruff: noqa: N818 - the public names are part of the API (bgq.JobFailed, ...)
"""The bgq exception hierarchy: every error a user can see, each with an actionable message.

Everything raised on purpose by bgq derives from :class:`BgqError`, so callers can catch the
whole family with one ``except``. Messages say what was wrong and what to do about it.
"""

from __future__ import annotations


class BgqError(Exception):
    """Base class of every error bgq raises on purpose."""


class ConfigError(BgqError, ValueError):
    """A setting or argument is invalid (bad URL, bad option combination, ...)."""


class InvalidQueueName(ConfigError):
    """A queue name is not ``<namespace>/<name>`` made of DNS-1123 labels."""


class RedisUnavailable(BgqError, ConnectionError):
    """Redis could not be reached; the message names the URL (without its password)."""


class NotReplicated(BgqError):
    """A durable enqueue (``wait_replicas``) was applied on the primary but fewer replicas than
    asked confirmed it in time. Retrying with the same ``job_id`` is safe (it answers
    ``exists``)."""


class RedisCommandError(BgqError):
    """Redis answered but refused the command (READONLY after a failover, OOM, a cluster
    redirection the client could not follow, ...); the message names the URL without password."""


class PayloadError(BgqError, ValueError):
    """A job's arguments are not JSON-serialisable or the envelope is over the size limit."""


class PayloadTooLarge(PayloadError):
    """The job's envelope is over the size limit (``size`` and ``limit`` in bytes)."""

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class UnknownTask(BgqError, LookupError):
    """A job names a task the worker does not know (not registered with ``@bgq.task``)."""


class JobNotFound(BgqError, LookupError):
    """No record of the job exists in the queue (never enqueued, or its result expired)."""


class JobFailed(BgqError):
    """A job ended in the dead-letter stream; carries its error and traceback."""

    def __init__(self, job_id: str, error: str, traceback: str = "", reason: str = "") -> None:
        self.job_id = job_id
        self.error = error
        self.traceback = traceback
        self.reason = reason
        super().__init__(f"job {job_id} failed ({reason or 'dead-lettered'}): {error}")


class JobCancelled(BgqError):
    """A job was cancelled before it produced a result."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} was cancelled")


class JobTimeout(BgqError, TimeoutError):
    """A job ran longer than its timeout (raised inside the worker; the job is retried)."""


class WaitTimeout(BgqError, TimeoutError):
    """``wait()`` gave up before the job reached a final state; the job itself goes on."""


class Retry(BgqError):
    """Raise from a task to ask for a retry, optionally after ``delay`` seconds.

    Counts as a failed attempt (it consumes one retry) but is never filtered by ``retry_on``.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        self.delay = delay
        super().__init__(reason)


__all__ = [
    "BgqError",
    "ConfigError",
    "InvalidQueueName",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "PayloadError",
    "PayloadTooLarge",
    "RedisCommandError",
    "RedisUnavailable",
    "Retry",
    "UnknownTask",
    "WaitTimeout",
]
