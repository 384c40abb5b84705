"""The tasks of `make demo` (module ``demo_tasks``): a realistic mix of background work.

* ``send_email`` and ``resize_image`` sleep 0.1-2 s (I/O-bound ``async`` work),
* ``sync_inventory`` sleeps 1-5 s and, when asked, fails on its first attempt and succeeds on
  the retry (a flaky downstream),
* ``render_report`` is CPU-bound (hashing in a child process, ``cpu_bound=True``),
* ``export_archive`` is a long job (the drain scenario: scale-down and rolling update while it
  runs).

Every task also writes a small record of its own run to Redis, so the demo can prove from the
task side what happened, independently of the queue's bookkeeping: ``starts`` and ``ends``
(a start without an end is a run that was interrupted), ``waited_ms`` (enqueue to first start)
and ``drained`` (runs that finished after their worker was told to shut down). The keys are
``bgq-demo:{<queue>}:<what>``, hashes keyed by job id. A task of your own needs none of this:
it is only the demo's measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator

import redis
import redis.asyncio

import bgq

_async_clients: dict[int, redis.asyncio.Redis] = {}


def _keys() -> tuple[str, str]:
    job = bgq.current_job()
    return f"bgq-demo:{{{job.queue}}}:", job.job_id


def _url() -> str:
    return os.environ.get("BGQ_REDIS_URL", "redis://localhost:6379/0")


def _async_client() -> redis.asyncio.Redis:
    loop = id(asyncio.get_running_loop())
    if loop not in _async_clients:
        _async_clients[loop] = redis.asyncio.Redis.from_url(_url())
    return _async_clients[loop]


@contextlib.asynccontextmanager
async def _recorded() -> AsyncIterator[None]:
    """Record the start and the normal end (return or exception) of this run."""
    prefix, job_id = _keys()
    job = bgq.current_job()
    r = _async_client()
    waited = max(0, int(time.time() * 1000) - job.enqueued_ms)
    async with r.pipeline(transaction=False) as pipe:
        pipe.hincrby(prefix + "starts", job_id, 1)
        pipe.hsetnx(prefix + "waited_ms", job_id, waited)
        await pipe.execute()
    try:
        yield
    except asyncio.CancelledError:
        raise  # interrupted: no end record
    except Exception:
        await _ended(r, prefix, job_id)
        raise
    await _ended(r, prefix, job_id)


async def _ended(r: redis.asyncio.Redis, prefix: str, job_id: str) -> None:
    async with r.pipeline(transaction=False) as pipe:
        pipe.hincrby(prefix + "ends", job_id, 1)
        if bgq.current_job().shutdown_requested:
            pipe.hincrby(prefix + "drained", job_id, 1)
        await pipe.execute()


@contextlib.contextmanager
def _recorded_sync() -> Iterator[None]:
    """The same for a task in a child process (``cpu_bound``), with a blocking client."""
    prefix, job_id = _keys()
    job = bgq.current_job()
    with redis.Redis.from_url(_url()) as r:
        waited = max(0, int(time.time() * 1000) - job.enqueued_ms)
        r.hincrby(prefix + "starts", job_id, 1)
        r.hsetnx(prefix + "waited_ms", job_id, waited)
        try:
            yield
        finally:  # a return or an exception; a killed child process writes nothing
            r.hincrby(prefix + "ends", job_id, 1)


class FlakyDownstreamError(Exception):
    """The inventory service answered 503 (on purpose, once)."""


@bgq.task(retries=3, timeout=30)
async def send_email(to: str, seconds: float) -> str:
    """Pretend to talk to a mail server for ``seconds``."""
    async with _recorded():
        await asyncio.sleep(seconds)
        return f"sent to {to}"


@bgq.task(retries=3, timeout=30)
async def resize_image(image_id: int, seconds: float) -> dict[str, int]:
    """Pretend to fetch, resize and store an image."""
    async with _recorded():
        await asyncio.sleep(seconds)
        return {"image": image_id, "width": 640}


@bgq.task(retries=3, timeout=30)
async def sync_inventory(sku: str, seconds: float, fail_first: bool = False) -> str:
    """Sync one SKU; with ``fail_first`` the first attempt fails and the retry succeeds."""
    async with _recorded():
        await asyncio.sleep(seconds)
        if fail_first and bgq.current_job().attempt == 1:
            raise FlakyDownstreamError(f"inventory service unavailable for {sku} (demo: retried)")
        return f"{sku} in sync"


@bgq.task(cpu_bound=True, retries=3, timeout=60)
def render_report(report_id: int, rounds: int = 200_000) -> str:
    """CPU-bound: hash ``rounds`` times in a child process, outside the worker's event loop."""
    with _recorded_sync():
        data = str(report_id).encode()
        for _ in range(rounds):
            data = hashlib.sha256(data).digest()
        return data.hex()[:16]


@bgq.task(retries=3, timeout=600)
async def export_archive(export_id: int, seconds: float) -> str:
    """A long job: keeps running through a scale-down or a rolling update of its worker,
    which drains (finishes it) before the pod goes."""
    async with _recorded():
        await asyncio.sleep(seconds)
        return f"export {export_id} done"
