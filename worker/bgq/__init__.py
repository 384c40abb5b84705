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
