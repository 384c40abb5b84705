"""Tasks baked into the e2e worker image (``tests/e2e/app`` is on the image's PYTHONPATH).

Run them with ``bgq worker e2e_tasks`` (or ``BGQ_TASKS_MODULE=e2e_tasks``). Each task returns the
name of the pod that ran it, so tests can tell which worker did the work.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import bgq


def _pod() -> str:
    return os.environ.get("BGQ_POD_NAME") or socket.gethostname()


@bgq.task
def noop() -> str:
    """Do nothing; returns the pod name."""
    return _pod()


@bgq.task
def sleep(seconds: float) -> dict[str, Any]:
    """Block for ``seconds`` (a long job to interrupt); returns the pod and the time slept."""
    started = time.monotonic()
    time.sleep(seconds)
    return {"pod": _pod(), "slept": round(time.monotonic() - started, 3)}


@bgq.task
def counted_sleep(seconds: float, tally: str) -> dict[str, Any]:
    """:func:`sleep`, first counting this start of the job in the Redis hash ``tally`` (job id ->
    starts) on the worker's own Redis: a job started more than once was interrupted (cut off by a
    SIGKILL or handed back by a drain after it had started), which the delivery count alone does
    not tell (a prefetched job handed back unstarted is delivered twice but never interrupted).
    Used by bench/keda_live.py."""
    import redis

    job_id = bgq.current_job().job_id
    with redis.Redis.from_url(os.environ["BGQ_REDIS_URL"]) as r:
        pipe = r.pipeline(transaction=False)
        pipe.hincrby(tally, job_id, 1)
        # when the job first really ran (a prefetched job waits in the worker after its fetch,
        # which is when the job hash's started_ms is set)
        pipe.hsetnx(f"{tally}:first", job_id, int(time.time() * 1000))
        pipe.execute()
    return sleep(seconds)


@bgq.task
def record(value: Any) -> dict[str, Any]:
    """Echo ``value`` with the pod that processed it."""
    return {"pod": _pod(), "value": value}


# ------------------------------------------------ drain tests (tests/e2e/test_drain.py)
# Each ``ledger_*`` task writes "start" and "end" records for its tag to a Redis list, so a test
# can prove every job ran exactly once and was never interrupted (a start without an end, or two
# starts, would show it). The list lives on the worker's own Redis (BGQ_REDIS_URL).
def _ledger_push(ledger: str, tag: str, what: str) -> None:
    import redis

    with redis.Redis.from_url(os.environ["BGQ_REDIS_URL"]) as r:
        r.rpush(ledger, f"{what} {tag} {_pod()} {time.time():.3f}")


@bgq.task
def ledger_thread(ledger: str, tag: str, seconds: float) -> str:
    """A plain ``def`` job (thread pool) that blocks for ``seconds``."""
    _ledger_push(ledger, tag, "start")
    time.sleep(seconds)
    _ledger_push(ledger, tag, "end")
    return _pod()


@bgq.task
async def ledger_async(ledger: str, tag: str, seconds: float) -> str:
    """An ``async def`` job on the worker's event loop."""
    import asyncio

    import redis.asyncio as aredis

    async with aredis.Redis.from_url(os.environ["BGQ_REDIS_URL"]) as r:
        await r.rpush(ledger, f"start {tag} {_pod()} {time.time():.3f}")
        await asyncio.sleep(seconds)
        await r.rpush(ledger, f"end {tag} {_pod()} {time.time():.3f}")
    return _pod()


@bgq.task(cpu_bound=True)
def ledger_process(ledger: str, tag: str, seconds: float) -> str:
    """A ``cpu_bound`` job in a child process: spins the CPU for ``seconds``."""
    _ledger_push(ledger, tag, "start")
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    _ledger_push(ledger, tag, "end")
    return _pod()


# ------------------------------------------------ limits tests (tests/e2e/test_limits.py)
@bgq.task
def ledger_job(ledger: str) -> str:
    """Append "<job id> <attempt> <pod>" to a Redis list: one line per run of this job."""
    job = bgq.current_job()
    import redis

    with redis.Redis.from_url(os.environ["BGQ_REDIS_URL"]) as r:
        r.rpush(ledger, f"{job.job_id} {job.attempt} {_pod()}")
    return _pod()
