"""Producer clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Shape of the API (identical on both; the async one is awaited)::

    client = bgq.Client("redis://localhost:6379/0")          # or BGQ_REDIS_URL
    job = client.enqueue("emails", "send_email", "a@b.c", subject="hi")   # task args/kwargs
    job = client.enqueue_with("emails", send_email, args=["a@b.c"], kwargs={"subject": "hi"},
                              job_id="order-42", delay=10, priority="high",
                              unique_key="mail:a@b.c", unique_ttl=None, timeout=30, retries=5)
    jobs = client.enqueue_many("emails", [bgq.JobSpec("send_email", args=[...]), ...])
    info = client.get("emails", job.id)          # JobInfo: state, attempt, result/error...
    value = client.wait("emails", job.id, timeout=30)   # result, or JobFailed/JobCancelled
    client.cancel("emails", job.id)              # "cancelled" | "cancelling" | final state
    client.stats("emails")                       # QueueDemand (backlog, in_flight, workers...)
    client.dead_letters("emails"); client.replay_dead("emails"); client.purge_dead("emails")

``enqueue(queue, task, *args, **kwargs)`` passes every extra argument to the task, so it can
never clash with an option; options go through ``enqueue_with`` (or a :class:`JobSpec`).
Queue names are ``"ns/name"`` or a bare ``"name"`` resolved against the client's namespace.
"""

from __future__ import annotations

from bgq._async.client import AsyncClient
from bgq._client_core import (
    DeadLetter,
    Job,
    JobInfo,
    JobSpec,
    ReplayResult,
    new_traceparent,
    task_name,
)
from bgq._sync.client import Client
from bgq.protocol import Keys

__all__ = [
    "AsyncClient",
    "Client",
    "DeadLetter",
    "Job",
    "JobInfo",
    "JobSpec",
    "Keys",
    "ReplayResult",
    "new_traceparent",
    "task_name",
]
