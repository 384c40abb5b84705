"""Fixtures for the worker integration tests: in-process workers and worker subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import bgqtest_tasks  # noqa: E402, F401 - registers the test tasks

from bgq.protocol import QueueName  # noqa: E402
from bgq.settings import Settings  # noqa: E402
from bgq.worker import Worker  # noqa: E402

QUEUE = "test/jobs"


def wait_until(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll ``cond`` until truthy; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


async def await_until(cond: Callable[[], Any], seconds: float, what: str) -> Any:
    """Async twin of :func:`wait_until`."""
    deadline = time.monotonic() + seconds
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def queue() -> QueueName:
    return QueueName.parse(QUEUE)


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    os.environ["BGQ_TEST_REDIS_URL"] = redis_url
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "queue": QUEUE,
        "http_port": 0,
        "pod_name": "test",
        "lease_seconds": 5,
        "heartbeat_seconds": 0.5,
        "backoff_base_seconds": 0.05,
        "backoff_max_seconds": 0.2,
        "drain_seconds": 5,
    }
    base.update(overrides)
    return Settings(**base)


class InProcessWorker:
    """A Worker running as a task of the test's event loop."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.task: asyncio.Task[int] | None = None

    async def start(self) -> InProcessWorker:
        self.task = asyncio.create_task(self.worker.run())
        await await_until(lambda: self.worker.ready, 10, "the worker to connect")
        return self

    async def stop(self, seconds: float = 30) -> int:
        self.worker.request_stop()
        assert self.task is not None
        return await asyncio.wait_for(self.task, seconds)


StartWorker = Callable[..., Awaitable[InProcessWorker]]
"""The type of the ``start_worker`` fixture."""


@pytest.fixture
async def start_worker(redis_url: str, rdb: redis.Redis) -> AsyncIterator[StartWorker]:
    """``await start_worker(consumer=..., **settings)`` -> a running InProcessWorker."""
    started: list[InProcessWorker] = []

    async def start(consumer: str | None = None, **overrides: Any) -> InProcessWorker:
        settings = make_settings(redis_url, **overrides)
        w = InProcessWorker(
            Worker(settings, QueueName.parse(QUEUE), consumer=consumer or f"w{len(started)}")
        )
        started.append(w)
        return await w.start()

    yield start
    for w in started:
        if w.task is not None and not w.task.done():
            w.worker.request_stop()
            w.worker.request_stop()
            try:
                await asyncio.wait_for(w.task, 15)
            except Exception:
                w.task.cancel()


def _block_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


class WorkerProcess:
    """``python -m bgq.worker bgqtest_tasks`` as a subprocess."""

    def __init__(
        self, redis_url: str, name: str, log: Path, *, block_signals: bool = False, **env: Any
    ) -> None:
        environ = dict(os.environ)
        environ.update(
            {
                "PYTHONPATH": os.pathsep.join([str(HERE), environ.get("PYTHONPATH", "")]),
                "BGQ_REDIS_URL": redis_url,
                "BGQ_TEST_REDIS_URL": redis_url,
                "BGQ_QUEUE": QUEUE,
                "BGQ_HTTP_PORT": "0",
                "BGQ_POD_NAME": name,
                "BGQ_HEARTBEAT_SECONDS": "0.5",
                "BGQ_BACKOFF_BASE_SECONDS": "0.05",
                "BGQ_LOG_LEVEL": "INFO",
            }
        )
        for k, v in env.items():  # None removes a variable
            if v is None:
                environ.pop(k, None)
            else:
                environ[k] = str(v)
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bgq.worker", "bgqtest_tasks"],
            env=environ,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            # started with SIGTERM/SIGINT blocked, as an init may start it: a signal sent at
            # once is pending until the worker's handler is in place (bgq._runtime.signals)
            preexec_fn=_block_stop_signals if block_signals else None,  # noqa: PLW1509 - sigmask only
        )
        self.name = name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


SpawnWorker = Callable[..., WorkerProcess]
"""The type of the ``spawn_worker`` fixture."""


@pytest.fixture
def spawn_worker(redis_url: str, rdb: redis.Redis, tmp_path: Path) -> Iterator[SpawnWorker]:
    """``spawn_worker(name, redis_url=None, **BGQ_env)`` -> WorkerProcess (killed at teardown)."""
    procs: list[WorkerProcess] = []

    def spawn(
        name: str = "p", url: str | None = None, *, block_signals: bool = False, **env: Any
    ) -> WorkerProcess:
        label = f"{name}{len(procs)}"
        p = WorkerProcess(
            url or redis_url, label, tmp_path / f"{label}.log", block_signals=block_signals, **env
        )
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        p.close()


def worker_alive(rdb: redis.Redis, pod_prefix: str = "") -> list[str]:
    """Consumers with a live heartbeat record."""
    keys = QueueName.parse(QUEUE).keys
    members = cast(list[str], rdb.zrange(keys.workers, 0, -1))  # decode_responses=True
    return [c for c in members if c.startswith(pod_prefix) and rdb.exists(keys.worker(c))]
