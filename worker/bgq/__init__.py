"""bgq: a Kubernetes-native background job queue on Redis Streams.

Declare tasks in a module (``myapp/tasks.py``)::

    import bgq

    @bgq.task(retries=3, timeout=30)            # async def: runs on the worker's event loop
    async def send_email(to: str, subject: str) -> str:
        job = bgq.current_job()                  # job_id, attempt, shutdown_requested, ...
        ...
        return "sent"

    @bgq.task(cpu_bound=True, timeout=600)       # runs in a child process, killed on timeout
    def render_report(report_id: int) -> dict: ...

Run workers: ``bgq worker myapp.tasks --queue shop/emails`` (or ``python -m bgq.worker``);
every setting also comes from ``BGQ_*`` variables (``bgq.settings.Settings``).

Produce jobs::

    client = bgq.Client()                        # BGQ_REDIS_URL, else localhost
    job = client.enqueue("shop/emails", send_email, "a@b.c", subject="hi")
    client.enqueue_with("emails", "send_email", args=["a@b.c"], kwargs={"subject": "hi"},
                        job_id="welcome-42", delay=60, priority="high", unique_key="a@b.c")
    print(client.wait("shop/emails", job.id, timeout=30))

Operators read demand with :func:`bgq.stats.read_demand`. The Redis protocol (for producers in
other languages) is in docs/protocol.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Light modules (standard library only) load at once; ``bgq.task`` must, so that the package
# attribute ``task`` is the decorator and not the submodule of the same name.
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
    PayloadTooLarge,
    RedisCommandError,
    RedisUnavailable,
    Retry,
    UnknownTask,
    WaitTimeout,
)
from bgq.task import Task, task

if TYPE_CHECKING:
    from bgq._version import __version__
    from bgq.client import AsyncClient, Client, DeadLetter, Job, JobInfo, JobSpec, ReplayResult
    from bgq.protocol import Envelope, JobState, QueueName
    from bgq.stats import QueueDemand, WorkerHeartbeat

_EXPORTS = {
    "AsyncClient": "bgq.client",
    "Client": "bgq.client",
    "DeadLetter": "bgq.client",
    "Job": "bgq.client",
    "JobInfo": "bgq.client",
    "JobSpec": "bgq.client",
    "ReplayResult": "bgq.client",
    "Envelope": "bgq.protocol",
    "JobState": "bgq.protocol",
    "QueueName": "bgq.protocol",
    "QueueDemand": "bgq.stats",
    "WorkerHeartbeat": "bgq.stats",
    "__version__": "bgq._version",
}
"""Public names from heavy modules (redis-py, pydantic) -> defining module, imported on first use
(PEP 562): ``import bgq`` stays cheap, so the worker's entry point has its signal handler in
place before those load."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bgq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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
    "PayloadTooLarge",
    "QueueDemand",
    "QueueName",
    "RedisCommandError",
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
