"""The Redis job protocol: queue names, key layout, the job envelope and job states.

Everything a producer or worker must agree on lives here (and in ``bgq/lua/*.lua``); it is
documented for other languages in ``docs/protocol.md``. This module is pure: no I/O.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bgq.errors import InvalidQueueName

PROTOCOL_VERSION = 1
GROUP = "workers"
"""The consumer group every worker of a queue reads with."""
WAKE_CHANNEL = "bgq:wake"
"""Pub/sub channel the enqueue script publishes a queue's name on (rate-limited, 200 ms)."""
BANDS = (0, 1, 2)
"""Priority bands, read in this order: 0 high, 1 normal (default), 2 low."""
PRIORITIES: dict[str, int] = {"high": 0, "normal": 1, "low": 2}
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
"""A DNS-1123 label; always used with ``fullmatch`` (``$`` would let a trailing newline in)."""


class JobState(enum.StrEnum):
    """Where a job is in its life (the ``state`` field of its hash).

    ``scheduled`` (delayed) → ``queued`` → ``running`` → ``succeeded``; a failure moves a running
    job to ``retrying`` (in the delayed set) or, when retries are exhausted, to ``dead``.
    ``cancelled`` is final too. A drained worker hands a running job back to ``queued``.
    """

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """True for states a job never leaves (its record then expires after the result TTL)."""
        return self in (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)


def _check_label(part: str, what: str, text: str) -> None:
    if not part:
        raise InvalidQueueName(f"queue name {text!r}: the {what} is empty")
    if len(part) > 63:
        raise InvalidQueueName(
            f"queue name {text!r}: the {what} {part!r} is longer than 63 characters"
        )
    if not _LABEL.fullmatch(part):
        raise InvalidQueueName(
            f"queue name {text!r}: the {what} {part!r} is not a DNS-1123 label "
            "(lower-case letters, digits and '-', starting and ending with a letter or digit)"
        )


def resolve_namespace(explicit: str | None = None) -> str:
    """The namespace bare queue names resolve against.

    ``explicit`` if given, else ``BGQ_NAMESPACE``, else the pod's service-account namespace file,
    else ``default``.
    """
    if explicit:
        return explicit
    env = os.environ.get("BGQ_NAMESPACE")
    if env:
        return env
    try:
        text = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        text = ""
    return text or "default"


@dataclass(frozen=True, slots=True)
class QueueName:
    """A queue's identity ``<namespace>/<name>``; ``str()`` gives the full name."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str, default_namespace: str | None = None) -> QueueName:
        """Parse ``"ns/name"`` or a bare ``"name"`` (resolved against ``default_namespace``).

        ``default_namespace=None`` applies the usual resolution (``BGQ_NAMESPACE``, the pod's
        namespace, ``default``). Raises :class:`bgq.InvalidQueueName` saying what is wrong.
        """
        if not isinstance(text, str):
            raise InvalidQueueName(f"queue name must be a string, got {type(text).__name__}")
        if text.count("/") > 1:
            raise InvalidQueueName(
                f"queue name {text!r} has more than one '/': use '<namespace>/<name>' or '<name>'"
            )
        if "/" in text:
            namespace, name = text.split("/", 1)
        else:
            namespace, name = resolve_namespace(default_namespace), text
        _check_label(namespace, "namespace", text)
        _check_label(name, "name", text)
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def keys(self) -> Keys:
        """The Redis key layout of this queue."""
        return Keys(self)


class Keys:
    """Redis key names of one queue; all share the hash tag ``{ns/name}`` (Redis Cluster)."""

    __slots__ = ("dead", "delayed", "prefix", "queue", "ready", "stats", "wake", "workers")

    def __init__(self, queue: QueueName) -> None:
        self.queue = str(queue)
        self.prefix = f"bgq:{{{self.queue}}}"
        p = self.prefix
        self.ready = tuple(f"{p}:ready:{band}" for band in BANDS)
        self.delayed = f"{p}:delayed"
        self.dead = f"{p}:dead"
        self.workers = f"{p}:workers"
        self.stats = f"{p}:stats"
        self.wake = f"{p}:wake"

    def job(self, job_id: str) -> str:
        """The job's HASH."""
        return f"{self.prefix}:job:{job_id}"

    def uniq(self, key: str) -> str:
        """The STRING holding the job id that owns unique key ``key``."""
        return f"{self.prefix}:uniq:{key}"

    def worker(self, consumer: str) -> str:
        """A worker's heartbeat HASH."""
        return f"{self.prefix}:worker:{consumer}"

    def done(self, job_id: str) -> str:
        """LIST a waiter blocks on; pushed by the settle script only when a waiter registered."""
        return f"{self.prefix}:done:{job_id}"


class Envelope(BaseModel):
    """The immutable job description stored as JSON in the job hash field ``env``.

    Version ``v`` is 1. Unknown fields are kept (forward compatibility with newer producers).
    The live attempt number is NOT in the envelope: it is the hash field ``attempt``, which the
    fetch script returns with the envelope.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    v: Literal[1] = 1
    id: str = Field(min_length=1, max_length=200)
    task: str = Field(min_length=1, max_length=500)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    enqueued_at: int = Field(ge=0, description="ms since the epoch")
    max_retries: int | None = Field(default=None, ge=0)
    timeout: float | None = Field(default=None, gt=0)
    priority: int = Field(default=1, ge=0, le=2)
    unique_key: str | None = None


_JOB_ID = re.compile(r"[A-Za-z0-9._:@+=-]{1,200}")  # used with fullmatch


def check_job_id(job_id: str) -> str:
    """Validate a caller-supplied job id (it becomes part of a Redis key)."""
    from bgq.errors import ConfigError

    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ConfigError(
            f"job id {job_id!r} is invalid: use 1-200 characters from A-Z a-z 0-9 . _ : @ + = -"
        )
    return job_id


__all__ = [
    "BANDS",
    "GROUP",
    "PRIORITIES",
    "PROTOCOL_VERSION",
    "WAKE_CHANNEL",
    "Envelope",
    "JobState",
    "Keys",
    "QueueName",
    "check_job_id",
    "resolve_namespace",
]
