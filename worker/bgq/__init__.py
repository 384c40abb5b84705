"""bgq: a Kubernetes-native background job queue on Redis Streams.

Producers use :class:`Client` / :class:`AsyncClient`; task modules declare tasks with
:func:`task`; ``python -m bgq.worker MODULE`` (or ``bgq worker``) runs them. The protocol is in
docs/protocol.md.
"""

from __future__ import annotations

from bgq.client import (
    AsyncClient,
    Client,
    DeadLetter,
    Job,
    JobInfo,
    JobSpec,
    ReplayResult,
)
from bgq.context import JobContext, current_job
from bgq.errors import (
    BgqError,
    ConfigError,
    InvalidQueueName,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimeout,
    PayloadError,
    RedisUnavailable,
    Retry,
    UnknownTask,
    WaitTimeout,
)
from bgq.protocol import Envelope, JobState, QueueName
from bgq.stats import QueueDemand, WorkerHeartbeat
from bgq.task import Task, task

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "BgqError",
    "Client",
    "ConfigError",
    "DeadLetter",
    "Envelope",
    "InvalidQueueName",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobInfo",
    "JobNotFound",
    "JobSpec",
    "JobState",
    "JobTimeout",
    "PayloadError",
    "QueueDemand",
    "QueueName",
    "RedisUnavailable",
    "ReplayResult",
    "Retry",
    "Task",
    "UnknownTask",
    "WaitTimeout",
    "WorkerHeartbeat",
    "__version__",
    "current_job",
    "task",
]
