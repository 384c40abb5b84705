"""The worker: fetch in batches, run tasks, settle in coalesced batches, never lose a job.

:class:`Worker` is a thin shell that composes the runtime's parts (``bgq._runtime``), each with
one concern, around one asyncio loop per process:

* the **fetcher** fetches as many jobs as there is room for and blocks only when idle;
* the **executor** starts fetched jobs while slots are free (async on the loop, ``def`` in a
  thread pool, ``cpu_bound`` in a killable child process) and turns each run into a settle
  record with the pure ``decide_outcome``;
* the **settle buffer** sends finished jobs' records in coalesced, fenced batches;
* the **lease keeper** renews held leases and writes the heartbeat record;
* the **drain** (SIGTERM/SIGINT) is a small state machine under one hard deadline below the
  pod's grace period (``bgq._runtime.drain``).

Entry point: ``bgq worker MODULE --queue Q`` or ``python -m bgq.worker MODULE --queue Q``. The
signal handler is installed before any heavy import, so a SIGTERM in a pod's first instant is
honoured: the worker then fetches nothing and exits 0.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m bgq.worker: record SIGTERM before the heavy imports
    from bgq._runtime import signals as _early_signals

    _early_signals.capture()

import argparse
import asyncio
import atexit
import contextlib
import importlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

from bgq._calls import Delivery, QueueCalls, RetryAt, SettleRecord, StopReason
from bgq._runtime import signals
from bgq._runtime.aio import bounded, stop_tasks, wait_event
from bgq._runtime.drain import Drainer, ShutdownClock
from bgq._runtime.executor import Executor
from bgq._runtime.fetcher import Fetcher
from bgq._runtime.jobs import Held, JobTable
from bgq._runtime.keeper import LeaseKeeper, identity
from bgq._runtime.outcome import RetryPolicy
from bgq._runtime.probes import Probes
from bgq._runtime.settler import SettleBuffer
from bgq._version import __version__ as VERSION  # noqa: N812
from bgq.connection import AsyncRedis, BlockingConnection, async_client, redact
from bgq.context import ShutdownSignal
from bgq.errors import BgqError, ConfigError
from bgq.metrics import Metrics
from bgq.protocol import QueueName
from bgq.settings import Settings
from bgq.task import registry

log = logging.getLogger("bgq.worker")
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class Worker:
    """Runs the tasks of one queue until told to stop. ``await worker.run()`` returns 0."""

    def __init__(
        self,
        settings: Settings,
        queue: QueueName,
        *,
        consumer: str | None = None,
        redis_client: AsyncRedis | None = None,
    ) -> None:
        s = self.settings = settings
        self.queue = queue
        self.keys = queue.keys
        self.consumer = consumer or f"{s.pod_name}:{os.getpid()}"
        self.concurrency = s.concurrency
        prefetch = s.prefetch if s.prefetch is not None else s.concurrency
        self.limit = self.concurrency + prefetch
        self.queue_text = str(queue)
        self.metrics = Metrics(self.queue_text)
        self.table = JobTable()
        self.metrics.gauge(
            "jobs_in_flight", "Jobs fetched and not yet settled", lambda: len(self.table)
        )
        self.metrics.gauge("jobs_running", "Jobs running now", lambda: self.table.running)
        self.shutdown = ShutdownSignal()
        self._own_redis = redis_client is None
        # redis-py's own client of the configured topology (BGQ_REDIS_MODE): cluster clients
        # route every call of this queue to the node of its hash tag and follow MOVED/ASK
        self.redis: AsyncRedis = redis_client or async_client(s.redis, max_connections=32)
        self._blocker = BlockingConnection(self.redis, self.keys.ready[1])
        self.calls = QueueCalls(
            self.redis,
            self.keys,
            self.consumer,
            lease_ms=int(s.lease_seconds * 1000),
            max_deliveries=s.max_deliveries,
            result_ttl_ms=s.result_ttl_seconds * 1000,
            dead_retention_ms=s.dead_retention_seconds * 1000,
        )
        self.settler = SettleBuffer(self.calls, self.metrics)
        self.fetcher = Fetcher(
            self.calls,
            self._blocker,
            self.settler,
            self.metrics,
            concurrency=self.concurrency,
            limit=self.limit,
            held=lambda: len(self.table),
            running=lambda: self.table.running,
            on_fetched=self._fetched,
            checkpoints=self.table.checkpoints,
        )
        self.executor = Executor(
            self.table,
            self.settler,
            self.metrics,
            self.shutdown,
            queue=self.queue_text,
            concurrency=self.concurrency,
            default_timeout=s.default_timeout_seconds,
            default_retries=s.default_max_retries,
            retry_policy=RetryPolicy(s.backoff_base_seconds, s.backoff_max_seconds),
            thread_pool_size=s.thread_pool_size,
            process_pool_size=s.process_pool_size,
            on_finished=self._finished,
            on_dispatched=self._dispatched,
            pod=s.pod_name,
        )
        self.keeper = LeaseKeeper(
            self.calls,
            self.table,
            self.metrics,
            lease_seconds=s.lease_seconds,
            heartbeat_seconds=s.heartbeat_seconds,
            identity=identity(s.pod_name, self.concurrency, VERSION),
            stop_job=self.executor.stop,
            state=self._state_name,
        )
        self.executor.flush_progress = self.keeper.flush_progress
        self.probes = Probes(
            max_lag_seconds=s.livez_max_lag_seconds,
            ready=lambda: self.ready,
            draining=lambda: self.draining,
            render_metrics=self.metrics.render,
        )
        self.ready = False
        self.draining = False
        self.drainer: Drainer | None = None
        self._stop_requested_at: float | None = None
        self._busy = False
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._finished_event = asyncio.Event()

    # ------------------------------------------------------------------------- state

    @property
    def running(self) -> int:
        """Jobs running now."""
        return self.table.running

    @property
    def held(self) -> dict[str, Held]:
        """Jobs fetched and not yet settled, by id."""
        return self.table.held

    @property
    def http_port(self) -> int | None:
        """The port the probes are served on (None: not serving)."""
        return self.probes.port

    def _state_name(self) -> str:
        if self.draining:
            return "draining"
        return "busy" if self.table.held else "idle"

    def _fetched(self, deliveries: list[Delivery]) -> None:
        for old in self.table.admit(deliveries):
            self.executor.stop(old)
        self.executor.dispatch()

    def _dispatched(self) -> None:
        busy = bool(self.table.held)
        if busy != self._busy and not self.draining:
            self._busy = busy
            self.keeper.wake.set()

    def _finished(self, h: Held, record: SettleRecord | None) -> None:
        if isinstance(record, RetryAt):
            self.fetcher.note_retry(record.due_ms)
        self.fetcher.space.set()
        self._finished_event.set()

    # ------------------------------------------------------------------------- lifecycle

    def request_stop(self, at: float | None = None) -> None:
        """First call: start draining (``at``: when the request arrived, monotonic). Second
        call: skip to the drain deadline."""
        if self._stop_requested_at is None:
            self._stop_requested_at = at if at is not None else time.monotonic()
            log.info(
                "shutdown requested: draining",
                extra={"drain_seconds": self.settings.drain_seconds, "held": len(self.table)},
            )
            self._stop.set()
        else:
            log.warning("second shutdown signal: skipping to the drain deadline")
            self._force.set()

    async def run(self, install_signals: bool = False) -> int:
        """Run until :meth:`request_stop` (or SIGTERM/SIGINT with ``install_signals``)."""
        loop = asyncio.get_running_loop()
        self.shutdown.bind()
        if install_signals:
            for at in signals.bind(loop.add_signal_handler, self.request_stop):
                self.request_stop(at)
        background: list[asyncio.Task[Any]] = []
        fetcher: asyncio.Task[None] | None = None
        try:
            # a bad explicit port fails before anything is opened
            await self.probes.start(self.settings.http_port)
            self.executor.open()
            background = [
                asyncio.create_task(self._ticker(), name="bgq-ticker"),
                asyncio.create_task(self.settler.run(), name="bgq-settler"),
                asyncio.create_task(self.keeper.run(), name="bgq-keeper"),
            ]
            if await self._connect_unless_stopped():
                self.ready = True
                log.info(
                    "worker started",
                    extra={
                        "queue": self.queue_text,
                        "consumer": self.consumer,
                        "concurrency": self.concurrency,
                        "redis": redact(self.settings.redis_url),
                        "version": VERSION,
                        "tasks": sorted(registry()),
                    },
                )
                fetcher = asyncio.create_task(self.fetcher.run(), name="bgq-fetcher")
                await self._stop.wait()
            await self._drain(fetcher)
        finally:
            await self._teardown(background)
            if install_signals:
                signals.release(loop.remove_signal_handler)
        log.info("worker stopped")
        return 0

    async def _connect_unless_stopped(self) -> bool:
        """Connect (retrying while Redis is down); give up at once when a stop arrives."""
        if self._stop.is_set():
            return False
        connect = asyncio.create_task(self._connect(), name="bgq-connect")
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({connect, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if connect.done():
            return connect.result()
        await stop_tasks([connect], 0.5)
        return False

    async def _connect(self) -> bool:
        delay = 0.2
        while not self._stop.is_set():
            try:
                await self._check_server()
                await self.calls.ensure_groups()
                await self.calls.load_scripts()
                return True
            except REDIS_ERRORS as exc:
                log.warning(
                    "redis unavailable, retrying",
                    extra={"redis": redact(self.settings.redis_url), "error": str(exc)},
                )
            await wait_event(self._stop, delay)
            delay = min(delay * 2, 5.0)
        return False

    async def _check_server(self) -> None:
        info = await self.redis.info("server")
        version = str(info.get("redis_version", "0"))
        parts = [int(x) for x in version.split(".")[:2] if x.isdigit()]
        if parts and parts < [7, 0]:
            raise ConfigError(
                f"Redis {version} at {redact(self.settings.redis_url)} is too old: bgq needs "
                "Redis >= 7.0 (XAUTOCLAIM, XINFO GROUPS lag)"
            )

    async def _ticker(self) -> None:
        """Marks the loop alive (/livez fails when this stops running) and enforces job
        timeouts (50 ms resolution)."""
        while True:
            self.probes.tick()
            self.executor.sweep_timeouts()
            await asyncio.sleep(0.05)

    async def _drain(self, fetcher: asyncio.Task[None] | None) -> None:
        self.draining = True
        self.shutdown.set()
        self.keeper.wake.set()
        self.drainer = Drainer(
            self._clock(),
            table=self.table,
            fetcher=self.fetcher,
            fetcher_task=fetcher,
            executor=self.executor,
            settler=self.settler,
            calls=self.calls,
            metrics=self.metrics,
            forced=self._force,
            finished=self._finished_event,
        )
        await self.drainer.run()

    def _clock(self) -> ShutdownClock:
        requested = self._stop_requested_at
        return ShutdownClock(
            requested if requested is not None else time.monotonic(),
            self.settings.drain_seconds,
        )

    async def _teardown(self, background: list[asyncio.Task[Any]]) -> None:
        """Stop everything within what is left of the hard deadline (at least a little)."""
        self.ready = False
        self.draining = True
        clock = self._clock()

        def left(cap: float) -> float:
            return max(0.05, min(cap, clock.left(time.monotonic())))

        await stop_tasks(background, left(0.5))
        if self.keeper.wrote_heartbeat:
            await bounded("remove the heartbeat record", self.keeper.remove_heartbeat(), left(1.0))
        await bounded("stop the probe server", self.probes.stop(), left(0.5))
        self.executor.close()
        await bounded("close the blocking connection", self._blocker.aclose(), left(0.5))
        if self._own_redis:
            await bounded("close the Redis connections", self.redis.aclose(), left(0.5))


# -------------------------------------------------------------------------------- entry point


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bgq worker",
        description="Run the tasks of one bgq queue. Every setting also comes from BGQ_* "
        "environment variables (see README / docs/design.md).",
    )
    p.add_argument(
        "module", nargs="?", help="module defining the tasks (default: BGQ_TASKS_MODULE)"
    )
    p.add_argument("--queue", "-q", help="queue 'ns/name' or 'name' (default: BGQ_QUEUE)")
    p.add_argument("--concurrency", "-c", type=int, help="jobs at once (default: BGQ_CONCURRENCY)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bgq.worker MODULE [--queue Q] [--concurrency N]``.

    Returns 2 for a configuration error found before the run. A stop signal before the event
    loop runs exits the process with 0 from the signal handler (``bgq._runtime.signals``);
    after a run it EXITS the process (0 after a clean drain, 1 for an error at start)."""
    signals.capture()  # idempotent: the entry point usually did it before the heavy imports
    args = _parser().parse_args(argv)
    try:
        overrides: dict[str, Any] = {}
        if args.queue:
            overrides["queue"] = args.queue
        if args.concurrency is not None:
            overrides["concurrency"] = args.concurrency
        settings = Settings(**overrides)
    except ValueError as exc:
        print(f"bgq worker: invalid settings: {exc}", file=sys.stderr)
        return 2
    from bgq.logs import configure

    configure(settings.log_level, settings.log_format)
    module = args.module or settings.tasks_module
    try:
        if not module:
            raise ConfigError("no tasks module: pass MODULE or set BGQ_TASKS_MODULE")
        if not settings.queue:
            raise ConfigError("no queue: pass --queue or set BGQ_QUEUE (e.g. 'ns/name')")
        queue = QueueName.parse(settings.queue, settings.namespace)
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"cannot import tasks module {module!r}: {exc}") from exc
        if not registry():
            raise ConfigError(
                f"tasks module {module!r} registers no tasks: decorate functions with @bgq.task"
            )
    except BgqError as exc:
        print(f"bgq worker: {exc}", file=sys.stderr)
        return 2
    if settings.otel:  # after the tasks module, which may configure the SDK
        from bgq import otel

        otel.instrument()

    code = _run_worker(Worker(settings, queue))
    # Leave without interpreter finalization: with a Redis that stopped answering it was
    # measured to take over a second (C-level teardown of connections and objects), which the
    # drain's deadline has no room for. atexit handlers (e.g. a tracing exporter's flush) and
    # logging still run; abandoned thread tasks (their jobs were handed back) cannot block us.
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if code is None else code)


def _run_worker(worker: Worker) -> int | None:
    """Run the worker on a fresh loop and close the loop with a bound (``asyncio.run`` waits
    without limit for leftover tasks and the default executor). None: a configuration error."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(worker.run(install_signals=True))
    except BgqError as exc:
        print(f"bgq worker: {exc}", file=sys.stderr)
        return None
    finally:
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in leftover:
            t.cancel()
        if leftover:
            loop.run_until_complete(asyncio.wait(leftover, timeout=0.25))
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), 0.25))
        loop.close()


__all__ = ["Held", "StopReason", "Worker", "main"]

if __name__ == "__main__":
    sys.exit(main())
