"""The worker runtime: fetch in batches, run tasks, settle in coalesced batches, never lose a job.

One asyncio loop per process drives everything:

* the **fetcher** calls ``fetch.lua`` for as many jobs as there is room for (running slots plus a
  prefetch buffer), and only when that returns nothing blocks in ``XREADGROUP ... BLOCK`` on a
  dedicated connection;
* **dispatch** starts fetched jobs while slots are free: ``async def`` on the loop, ``def`` in a
  bounded thread pool, ``cpu_bound`` in a killable child process (``bgq.procrun``);
* finished jobs append a record to the **settle buffer**; one flusher sends everything that
  accumulated in ONE ``settle.lua`` call (natural batching: the busier, the bigger the batch);
* the **keeper** renews every held lease in one ``renew.lua`` call each lease/3 (independent of
  job code: CPU-bound work runs elsewhere), learns about lost leases and cancel requests, and
  writes the heartbeat record every ``BGQ_HEARTBEAT_SECONDS`` and on idle<->busy changes.

SIGTERM (or SIGINT) starts the drain: stop fetching; hand back fetched-but-unstarted jobs at
once; tell running jobs (``current_job().shutdown_requested``); let them finish until
``BGQ_DRAIN_SECONDS``; then cancel what is left and hand it back without consuming a retry;
exit 0. A second signal skips to the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import heapq
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import Context, copy_context
from typing import Any

import redis
import redis.asyncio

from bgq.backoff import backoff_seconds
from bgq.connection import async_client, redact
from bgq.context import JobContext, ShutdownSignal, set_current
from bgq.errors import BgqError, ConfigError, JobTimeout, Retry, UnknownTask
from bgq.metrics import Metrics
from bgq.procrun import ProcessRunner
from bgq.protocol import GROUP, Envelope, QueueName
from bgq.scripts import SCRIPTS
from bgq.settings import Settings
from bgq.task import _REGISTRY as _TASKS
from bgq.task import Task, lookup, registry

log = logging.getLogger("bgq.worker")

VERSION = "0.1.0"
MAX_BLOCK_MS = 1000
"""Longest idle block: bounds how late an idle worker sees a delayed job become due."""
BUSY_BLOCK_MS = 100
"""Block while jobs run here: a retry they schedule is promoted within this time."""
CANCEL_GRACE_SECONDS = 2.0
"""At the drain deadline, how long cancelled jobs get to unwind before being handed back."""
HB_MIN_SPACING = 0.1
"""Least time between two heartbeat writes triggered by idle<->busy transitions."""
SETTLE_CHUNK = 2000
RENEW_CHUNK = 2000
_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Held:
    """A job this worker holds: fetched (maybe not started) and not yet settled."""

    __slots__ = (
        "attempt",
        "band",
        "ctx",
        "entry",
        "env_raw",
        "id",
        "runner",
        "started_ms",
        "stop_reason",
        "timeout",
        "token",
    )

    def __init__(  # noqa: PLR0917 - hot path, built from a flat reply
        self, job_id: str, band: int, entry: str, token: int, attempt: int, env: str
    ) -> None:
        self.id = job_id
        self.band = band
        self.entry = entry
        self.token = token
        self.attempt = attempt
        self.env_raw = env
        self.started_ms = 0
        self.runner: asyncio.Task[None] | None = None
        self.ctx: JobContext | None = None
        self.stop_reason = ""
        """Why the runner was cancelled: "drain", "lost", "cancel" or "timeout"."""
        self.timeout = 0.0


class Worker:
    """Runs the tasks of one queue until told to stop. ``await worker.run()`` returns 0."""

    def __init__(
        self,
        settings: Settings,
        queue: QueueName,
        *,
        consumer: str | None = None,
        redis_client: redis.asyncio.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.keys = queue.keys
        self.consumer = consumer or f"{settings.pod_name}:{os.getpid()}"
        self.concurrency = settings.concurrency
        prefetch = settings.prefetch if settings.prefetch is not None else settings.concurrency
        self.limit = self.concurrency + prefetch
        self.lease_ms = int(settings.lease_seconds * 1000)
        self.result_ttl_ms = settings.result_ttl_seconds * 1000
        self.dead_retention_ms = settings.dead_retention_seconds * 1000
        self.queue_text = str(queue)
        self.metrics = Metrics(self.queue_text)
        self.metrics.gauge(
            "jobs_in_flight", "Jobs fetched and not yet settled", lambda: len(self.held)
        )
        self.metrics.gauge("jobs_running", "Jobs running now", lambda: self.running)
        self._deadlines: list[tuple[float, int, Held]] = []
        self._seq = 0
        self.shutdown = ShutdownSignal()
        self._redis_arg = redis_client
        self.redis: redis.asyncio.Redis = redis_client  # type: ignore[assignment]
        self._blocker: redis.asyncio.Redis | None = None
        self._blocker_id: int | None = None
        """CLIENT ID of the blocking connection, so a drain can CLIENT UNBLOCK it at once."""

        self.held: dict[str, Held] = {}
        self.backlog: collections.deque[Held] = collections.deque()
        self.running = 0
        self.ready = False
        self.draining = False
        self._stop_requested_at: float | None = None
        self._settle_buf: list[tuple[Any, ...]] = []
        self._last_tick = time.monotonic()
        self._state = "idle"
        self._threads: ThreadPoolExecutor | None = None
        self._procs: ProcessRunner | None = None
        self._adopt: list[Any] = []
        self._settle_failures = 0
        self._settle_inflight = 0
        self._debug = log.isEnabledFor(logging.DEBUG)
        """Per-job debug logs only when enabled (the check is hoisted off the hot path)."""
        self._local_due = 0
        """Earliest due time of a retry this worker scheduled (its settle may still be queued)."""
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._space = asyncio.Event()
        self._settle_wake = asyncio.Event()
        self._settle_idle = asyncio.Event()
        self._settle_idle.set()
        self._hb_wake = asyncio.Event()

    # ---------------------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        """First call: start draining. Second call: skip to the drain deadline."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
            log.info(
                "shutdown requested: draining",
                extra={"drain_seconds": self.settings.drain_seconds, "held": len(self.held)},
            )
            self._stop.set()
        else:
            log.warning("second shutdown signal: skipping to the drain deadline")
            self._force.set()

    async def run(self, install_signals: bool = False) -> int:
        """Run until :meth:`request_stop` (or SIGTERM/SIGINT with ``install_signals``)."""
        loop = asyncio.get_running_loop()
        self.shutdown.bind()
        s = self.settings
        http = await self._start_http()  # first: a bad port fails before anything is opened
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        if self.redis is None:
            self.redis = async_client(
                s.redis_url, s.redis_password, s.redis_tls_ca_file, max_connections=32
            )
        self._blocker = async_client(
            s.redis_url, s.redis_password, s.redis_tls_ca_file, single_connection_client=True
        )
        self._threads = ThreadPoolExecutor(
            max_workers=s.thread_pool_size or self.concurrency, thread_name_prefix="bgq-task"
        )
        self._procs = ProcessRunner(s.process_pool_size or os.cpu_count() or 1)
        background = [
            asyncio.create_task(self._ticker(), name="bgq-ticker"),
            asyncio.create_task(self._settler(), name="bgq-settler"),
            asyncio.create_task(self._keeper(), name="bgq-keeper"),
        ]
        fetcher: asyncio.Task[None] | None = None
        try:
            if await self._connect():
                self.ready = True
                log.info(
                    "worker started",
                    extra={
                        "queue": str(self.queue),
                        "consumer": self.consumer,
                        "concurrency": self.concurrency,
                        "redis": redact(s.redis_url),
                        "version": VERSION,
                        "tasks": sorted(registry()),
                    },
                )
                fetcher = asyncio.create_task(self._fetcher(), name="bgq-fetcher")
                await self._stop.wait()
            await self._drain(fetcher)
        finally:
            self.ready = False
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._remove_heartbeat()
            if http is not None:
                await http.stop()
            self._threads.shutdown(wait=False, cancel_futures=True)
            await self._blocker.aclose()
            if self._redis_arg is None:
                await self.redis.aclose()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        log.info("worker stopped")
        return 0

    async def _connect(self) -> bool:
        """Create the consumer groups; retry while Redis is down unless a stop comes first."""
        delay = 0.2
        while not self._stop.is_set():
            try:
                await self._check_server()
                await self._ensure_groups()
                await self._load_scripts()
                return True
            except _REDIS_ERRORS as exc:
                log.warning(
                    "redis unavailable, retrying",
                    extra={"redis": redact(self.settings.redis_url), "error": str(exc)},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
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

    async def _ensure_groups(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys.ready:
            pipe.xgroup_create(key, GROUP, id="0", mkstream=True)
        for r in await pipe.execute(raise_on_error=False):
            if isinstance(r, Exception) and "BUSYGROUP" not in str(r):
                raise r

    async def _start_http(self) -> Any:
        if not self.settings.http_port:
            return None
        from bgq.httpserver import HttpServer, Request, Response

        server = HttpServer("0.0.0.0", self.settings.http_port)
        max_lag = self.settings.livez_max_lag_seconds

        async def livez(_: Request) -> Response:
            lag = time.monotonic() - self._last_tick
            if lag > max_lag:
                return Response(503, f"event loop blocked for {lag:.1f} s\n".encode())
            return Response(200, b"ok\n")

        async def readyz(_: Request) -> Response:
            if self.ready and not self.draining:
                return Response(200, b"ready\n")
            return Response(503, b"draining\n" if self.draining else b"not ready\n")

        async def metrics(_: Request) -> Response:
            return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

        server.route("GET", "/livez", livez)
        server.route("GET", "/readyz", readyz)
        server.route("GET", "/metrics", metrics)
        try:
            await server.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot serve probes and metrics on port {self.settings.http_port}: {exc} "
                "(set BGQ_HTTP_PORT to a free port, or 0 to disable)"
            ) from exc
        self.http_port = server.port
        return server

    async def _ticker(self) -> None:
        """Marks the loop alive (/livez fails when this stops running) and enforces job
        timeouts (50 ms resolution)."""
        while True:
            self._last_tick = time.monotonic()
            if self._deadlines:
                self._sweep_timeouts()
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------------------- fetch

    async def _fetcher(self) -> None:
        delay = 0.1
        while not self.draining:
            room = self.limit - len(self.held)
            # batch: with every slot busy or spoken for, wait until half the room is free
            if room <= 0 or (len(self.held) >= self.concurrency and room < self.limit // 2):
                self._space.clear()
                await self._space.wait()
                continue
            try:
                got, next_due = await self._fetch(room)
                delay = 0.1
                if got == 0:
                    await self._block(room, next_due)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the fetcher die: log, back off, go on
                self.metrics.counts["redis_errors"] += 1
                log.warning(
                    "fetch failed, retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                    exc_info=not isinstance(exc, (*_REDIS_ERRORS, redis.ResponseError)),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
                    with contextlib.suppress(*_REDIS_ERRORS, redis.ResponseError):
                        await self._ensure_groups()

    async def _fetch(self, room: int) -> tuple[int, int]:
        s = self.settings
        adopt, self._adopt = self._adopt, []
        now = _now_ms()
        fetch_args = [
            self.keys.prefix,
            self.consumer,
            room,
            now,
            self.lease_ms,
            s.max_deliveries,
            self.result_ttl_ms,
            self.dead_retention_ms,
            *adopt,
        ]
        if not self._settle_buf:
            settled = self._settle_idle.is_set()
            reply = await SCRIPTS.fetch.arun(self.redis, [self.keys.ready[1]], fetch_args)
        else:
            # completions waiting: send them in the same round trip as the fetch
            settled = not self._settle_inflight and len(self._settle_buf) <= SETTLE_CHUNK
            reply = await self._settle_and_fetch(fetch_args)
        n = int(reply[1])
        if self._local_due and settled and self._local_due <= now:
            self._local_due = 0  # this fetch promoted it
        self.metrics.counts["reclaimed"] += int(reply[3])
        if n:
            held = self.held
            backlog = self.backlog
            flat = json.loads(reply[2])
            for i in range(0, 6 * n, 6):
                h = Held(*flat[i : i + 6])
                old = held.get(h.id)
                if old is not None:  # reclaimed our own job after a stall: newest token wins
                    old.stop_reason = "lost"
                    if old.runner is not None:
                        old.runner.cancel()
                held[h.id] = h
                backlog.append(h)
            self._dispatch()
        return n, int(reply[0])

    async def _settle_and_fetch(self, fetch_args: list[Any]) -> Any:
        """One pipelined round trip: EVALSHA settle (the buffered completions), EVALSHA fetch."""
        chunk = self._take_settle()
        route = [self.keys.ready[1]]
        pipe = self.redis.pipeline(transaction=False)
        pipe.evalsha(SCRIPTS.settle.sha, 1, *route, *self._settle_args(chunk))
        pipe.evalsha(SCRIPTS.fetch.sha, 1, *route, *fetch_args)
        try:
            settle_reply, fetch_reply = await pipe.execute(raise_on_error=False)
        except BaseException:
            self._settle_done(chunk, None)
            raise
        if isinstance(settle_reply, Exception):
            self._settle_done(chunk, None)
            self._settle_wake.set()
        else:
            self._settle_done(chunk, settle_reply)
        for r in (settle_reply, fetch_reply):
            if isinstance(r, redis.exceptions.NoScriptError):
                await self._load_scripts()
        if isinstance(fetch_reply, Exception):
            raise fetch_reply
        return fetch_reply

    async def _load_scripts(self) -> None:
        for script in (SCRIPTS.fetch, SCRIPTS.settle, SCRIPTS.renew, SCRIPTS.orphans):
            await self.redis.script_load(script.text)

    async def _block(self, room: int, next_due: int) -> None:
        """Nothing to fetch: block on the streams until an entry arrives or a delayed job is
        due (at most MAX_BLOCK_MS, so expired leases of dead workers are reclaimed; at most
        BUSY_BLOCK_MS while own jobs run, so retries they schedule start on time)."""
        block = BUSY_BLOCK_MS if self.running else MAX_BLOCK_MS
        now = _now_ms()
        for due in (next_due, self._local_due):
            if due > 0:
                block = max(1, min(block, due - now))
        assert self._blocker is not None
        if self._blocker_id is None:
            self._blocker_id = int(await self._blocker.client_id())
        try:
            reply: Any = await self._blocker.xreadgroup(
                GROUP,
                self.consumer,
                dict.fromkeys(self.keys.ready, ">"),
                count=room,
                block=block,
            )
        except BaseException:
            self._blocker_id = None  # the connection may be replaced
            raise
        for stream, entries in reply or []:
            band = self.keys.ready.index(stream)
            for entry_id, _ in entries:
                self._adopt += [band, entry_id]

    # ---------------------------------------------------------------------------- run

    def _dispatch(self) -> None:
        backlog = self.backlog
        while backlog and self.running < self.concurrency and not self.draining:
            h = backlog.popleft()
            if h.stop_reason:
                continue
            self.running += 1
            h.runner = asyncio.create_task(self._run(h))
        busy = bool(self.held)
        if busy != (self._state == "busy") and not self.draining:
            self._state = "busy" if busy else "idle"
            self._hb_wake.set()

    async def _run(self, h: Held) -> None:
        """Run one fetched job and queue its settle record. Kept lean: this is per job."""
        m = self.metrics
        counts = m.counts
        try:
            try:
                env = _validate_envelope(h.env_raw)
            except ValueError as exc:
                counts["failed"] += 1
                counts["dead"] += 1
                self._settle(h, "dead", "malformed-envelope", f"invalid job envelope: {exc}", "")
                return
            task = _TASKS.get(env.task)
            if task is None:
                try:
                    task = lookup(env.task)
                except UnknownTask as exc:
                    counts["failed"] += 1
                    counts["dead"] += 1
                    log.error("job dead-lettered", extra={"reason": "unknown-task"})
                    self._settle(h, "dead", "unknown-task", str(exc), "")
                    return
            s = self.settings
            max_retries = env.max_retries
            if max_retries is None:
                max_retries = task.retries if task.retries is not None else s.default_max_retries
            h.timeout = env.timeout or task.timeout or s.default_timeout_seconds
            ctx = JobContext(
                h.id,
                self.queue_text,
                env.task,
                h.attempt,
                max_retries,
                env.headers,
                env.enqueued_at,
                self.shutdown,
            )
            h.ctx = ctx
            set_current(ctx)
            now = time.time()
            h.started_ms = int(now * 1000)
            counts["started"] += 1
            m.queue_wait.observe(now - env.enqueued_at / 1000)
            t0 = time.perf_counter()
            try:
                if task.is_async:
                    self._seq += 1
                    heapq.heappush(self._deadlines, (t0 + h.timeout, self._seq, h))
                    result = await task.fn(*env.args, **env.kwargs)
                elif task.cpu_bound:
                    result = await self._run_process(task, env, ctx, h.timeout)
                else:
                    self._seq += 1
                    heapq.heappush(self._deadlines, (t0 + h.timeout, self._seq, h))
                    result = await asyncio.get_running_loop().run_in_executor(
                        self._threads, _call_in_context, copy_context(), task.fn, env
                    )
            except asyncio.CancelledError:
                self._stopped(h, task, ctx)
                return
            except Exception as exc:
                m.run_time.observe(time.perf_counter() - t0)
                self._failed(h, task, ctx, exc)
                return
            m.run_time.observe(time.perf_counter() - t0)
            try:
                text = "null" if result is None else _dump_json(result)
            except (TypeError, ValueError) as exc:
                counts["failed"] += 1
                counts["dead"] += 1
                error = f"the result of task {env.task!r} is not JSON-serialisable: {exc}"
                log.error("job dead-lettered", extra={"reason": "result-not-serialisable"})
                self._settle(h, "dead", "result-not-serialisable", error, "")
                return
            counts["succeeded"] += 1
            if self.draining:
                m.drain["completed"] += 1
            if self._debug:
                log.debug("job succeeded", extra={"seconds": round(time.perf_counter() - t0, 6)})
            self._settle(h, "ok", text, "", "")
        finally:
            self.running -= 1
            set_current(None)
            self._dispatch()

    async def _run_process(
        self, task: Task[Any, Any], env: Envelope, ctx: JobContext, limit: float
    ) -> Any:
        assert self._procs is not None
        fields = {
            "job_id": ctx.job_id,
            "queue": ctx.queue,
            "task": ctx.task,
            "attempt": ctx.attempt,
            "max_retries": ctx.max_retries,
            "headers": ctx.headers,
            "enqueued_ms": ctx.enqueued_ms,
        }
        try:
            return await self._procs.run(
                module=task.fn.__module__,
                name=task.task_name,
                args=env.args,
                kwargs=env.kwargs,
                ctx_fields=fields,
                time_limit=limit,
            )
        except TimeoutError:
            raise JobTimeout(
                f"task {env.task!r} exceeded its timeout of {limit} s; its process was killed"
            ) from None

    def _sweep_timeouts(self) -> None:
        """Cancel async/thread jobs past their timeout (one heap instead of a timer per job)."""
        heap = self._deadlines
        now = time.perf_counter()
        while heap and heap[0][0] <= now:
            _, _, h = heapq.heappop(heap)
            runner = h.runner
            if runner is not None and not runner.done() and not h.stop_reason:
                h.stop_reason = "timeout"
                if h.ctx is not None:
                    h.ctx.request_cancel()
                runner.cancel()

    def _failed(self, h: Held, task: Task[Any, Any], ctx: JobContext, exc: BaseException) -> None:
        counts = self.metrics.counts
        counts["failed"] += 1
        error = f"{type(exc).__name__}: {exc}"
        tb = getattr(exc, "__bgq_remote_traceback__", None) or "".join(
            traceback.format_exception(exc)
        )
        retryable = isinstance(exc, (Retry, JobTimeout, *task.retry_on))
        retry = retryable and h.attempt <= ctx.max_retries
        if retry:
            s = self.settings
            if isinstance(exc, Retry) and exc.delay is not None:
                delay = exc.delay
            else:
                delay = backoff_seconds(h.attempt, s.backoff_base_seconds, s.backoff_max_seconds)
            counts["retried"] += 1
            log.warning(
                "job failed, retrying",
                extra={"error": error, "retry_in_seconds": round(delay, 3)},
            )
            due = _now_ms() + int(delay * 1000)
            self._local_due = min(self._local_due or due, due)
            self._settle(h, "retry", due, error, tb)
        else:
            reason = "retries-exhausted" if retryable else "not-retryable"
            counts["dead"] += 1
            log.error("job dead-lettered", extra={"reason": reason, "error": error})
            self._settle(h, "dead", reason, error, tb)

    def _stopped(self, h: Held, task: Task[Any, Any], ctx: JobContext) -> None:
        """The runner was cancelled on purpose; settle according to why."""
        reason = h.stop_reason
        if reason == "timeout":
            exc = JobTimeout(f"task {ctx.task!r} exceeded its timeout of {h.timeout} s")
            if not task.is_async:
                exc = JobTimeout(
                    f"task {ctx.task!r} exceeded its timeout of {h.timeout} s (its thread was "
                    "abandoned; it can stop early by checking current_job().cancel_requested)"
                )
            self._failed(h, task, ctx, exc)
        elif reason == "cancel":
            self.metrics.counts["cancelled"] += 1
            self._settle(h, "cancelled", "", "", "")
        elif reason == "lost":
            if self.held.get(h.id) is h:
                del self.held[h.id]
        else:  # drain deadline: hand back without consuming a retry
            self.metrics.drain["released_deadline"] += 1
            self._settle(h, "release", "", "", "")

    def _settle(self, h: Held, op: str, a: Any, b: str, c: str) -> None:
        if self.held.get(h.id) is h:
            del self.held[h.id]
        self._settle_buf.append((op, h.id, h.band, h.entry, h.token, a, b, c))
        self._settle_wake.set()
        self._settle_idle.clear()
        self._space.set()

    # ---------------------------------------------------------------------------- settle

    async def _settler(self) -> None:
        while True:
            await self._settle_wake.wait()
            self._settle_wake.clear()
            # one loop turn first: a fetcher woken by the same completions takes the records
            # along with its fetch (one round trip for both). Otherwise settle on this
            # connection, overlapping with the fetch in flight (measured faster than waiting
            # for the fetch to carry them).
            await asyncio.sleep(0)
            await self._flush()

    def _settle_args(self, chunk: list[tuple[Any, ...]]) -> list[Any]:
        return [
            self.keys.prefix,
            _now_ms(),
            self.result_ttl_ms,
            self.dead_retention_ms,
            json.dumps(chunk, separators=(",", ":")),
        ]

    def _take_settle(self) -> list[tuple[Any, ...]]:
        """Move up to SETTLE_CHUNK records from the buffer into flight."""
        chunk = self._settle_buf[:SETTLE_CHUNK]
        del self._settle_buf[:SETTLE_CHUNK]
        self._settle_inflight += 1
        return chunk

    def _settle_done(self, chunk: list[tuple[Any, ...]], reply: Any) -> None:
        """Account for a settle call: ``reply`` None means it failed (records go back)."""
        self._settle_inflight -= 1
        if reply is None:
            self._settle_buf[:0] = chunk
        else:
            stale = len(reply) - 1
            if stale:
                self.metrics.counts["stale_acks"] += stale
                log.warning("completions rejected: jobs were reclaimed", extra={"count": stale})
        if not self._settle_buf and not self._settle_inflight:
            self._settle_idle.set()

    async def _flush(self) -> None:
        """Send every buffered settle record; retried while Redis is down (jobs are held by
        their leases meanwhile: nothing is lost, at worst a job runs again). Re-sending a
        record that did apply is harmless: the fencing rejects it as stale."""
        delay = 0.1
        while self._settle_buf:
            chunk = self._take_settle()
            try:
                reply = await SCRIPTS.settle.arun(
                    self.redis, [self.keys.ready[1]], self._settle_args(chunk)
                )
            except Exception as exc:  # keep the records and retry: they are the completions
                self._settle_done(chunk, None)
                self.metrics.counts["redis_errors"] += 1
                self._settle_failures += 1
                log.warning(
                    "settle failed, retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                    exc_info=not isinstance(exc, _REDIS_ERRORS),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._settle_done(chunk, reply)

    # ---------------------------------------------------------------------------- keeper

    async def _keeper(self) -> None:
        """Lease renewal (every lease/3) and heartbeat record (every heartbeat interval and on
        idle<->busy changes), on the loop, independent of job code."""
        s = self.settings
        renew_every = s.lease_seconds / 3
        next_renew = time.monotonic() + renew_every
        next_hb = 0.0
        last_hb = -1.0
        while True:
            now = time.monotonic()
            try:
                # transitions are written at once, but at most every HB_MIN_SPACING seconds
                if now >= next_hb or (
                    self._hb_wake.is_set() and now - last_hb >= HB_MIN_SPACING
                ):
                    self._hb_wake.clear()
                    await self._write_heartbeat()
                    last_hb = now
                    next_hb = now + s.heartbeat_seconds
                if now >= next_renew:
                    await self._renew()
                    next_renew = now + renew_every
            except Exception as exc:
                self.metrics.counts["redis_errors"] += 1
                log.warning(
                    "heartbeat/renewal failed, retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                    exc_info=not isinstance(exc, _REDIS_ERRORS),
                )
                next_hb = now + 0.5
            timeout = max(0.01, min(next_hb, next_renew) - time.monotonic())
            if self._hb_wake.is_set():  # a transition waits for the spacing
                await asyncio.sleep(min(timeout, max(0.01, last_hb + HB_MIN_SPACING - now)))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hb_wake.wait(), timeout)

    async def _renew(self) -> None:
        held = list(self.held.values())
        for i in range(0, len(held), RENEW_CHUNK):
            part = held[i : i + RENEW_CHUNK]
            args: list[Any] = [self.keys.prefix, self.consumer]
            for h in part:
                args += (h.id, h.band, h.entry, h.token)
            res = await SCRIPTS.renew.arun(self.redis, [self.keys.ready[1]], args)
            for h, status in zip(part, res, strict=True):
                if status == 1 or self.held.get(h.id) is not h:
                    continue  # renewed, or settled while the renewal was in flight
                if status == 2:
                    if not h.stop_reason:
                        h.stop_reason = "cancel"
                        log.info("cancel requested", extra={"job_id": h.id})
                        self._stop_job(h)
                else:
                    self.metrics.counts["leases_lost"] += 1
                    log.warning("lease lost: job was reclaimed elsewhere", extra={"job_id": h.id})
                    h.stop_reason = "lost"
                    del self.held[h.id]
                    self._stop_job(h)
            self.metrics.counts["lease_renewals"] += len(part)
        self._space.set()

    def _stop_job(self, h: Held) -> None:
        if h.ctx is not None:
            h.ctx.request_cancel()
        if h.runner is not None:
            h.runner.cancel()
        elif h.stop_reason == "cancel":
            with contextlib.suppress(ValueError):
                self.backlog.remove(h)
            self.metrics.counts["cancelled"] += 1
            self._settle(h, "cancelled", "", "", "")
        else:
            with contextlib.suppress(ValueError):
                self.backlog.remove(h)

    def heartbeat_fields(self) -> dict[str, Any]:
        """The heartbeat record (docs/design.md)."""
        started = [h.started_ms for h in self.held.values() if h.started_ms]
        state = "draining" if self.draining else ("busy" if self.held else "idle")
        return {
            "pod": self.settings.pod_name,
            "pid": os.getpid(),
            "state": state,
            "in_flight": len(self.held),
            "oldest_started_ms": min(started) if started else 0,
            "heartbeat_ms": _now_ms(),
            "concurrency": self.concurrency,
            "version": VERSION,
        }

    async def _write_heartbeat(self) -> None:
        fields: dict[Any, Any] = self.heartbeat_fields()
        key = self.keys.worker(self.consumer)
        ttl_ms = int(self.settings.heartbeat_seconds * 3000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, ttl_ms)
        pipe.zadd(self.keys.workers, {self.consumer: fields["heartbeat_ms"]})
        pipe.zremrangebyscore(self.keys.workers, "-inf", fields["heartbeat_ms"] - 10 * ttl_ms)
        await pipe.execute()

    async def _remove_heartbeat(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.worker(self.consumer))
        pipe.zrem(self.keys.workers, self.consumer)
        await pipe.execute()

    # ---------------------------------------------------------------------------- drain

    async def _drain(self, fetcher: asyncio.Task[None] | None) -> None:
        m = self.metrics
        self.draining = True
        self.shutdown.set()
        self._hb_wake.set()
        if fetcher is not None:
            # The fetcher sees `draining` after its current call; a blocking read lasts at most
            # MAX_BLOCK_MS (redis-py does not abort a blocked command on cancellation). Entries
            # it was delivered meanwhile are handed back by the orphans step below.
            self._space.set()
            await asyncio.wait([fetcher], timeout=0.01)
            if not fetcher.done() and self._blocker_id is not None:
                with contextlib.suppress(*_REDIS_ERRORS, redis.ResponseError):
                    await self.redis.client_unblock(self._blocker_id)
            await asyncio.wait([fetcher], timeout=MAX_BLOCK_MS / 1000 + 2)
            if not fetcher.done():
                fetcher.cancel()
                await asyncio.wait([fetcher], timeout=1)
        # hand back fetched-but-unstarted jobs at once
        unstarted = [h for h in self.backlog if not h.stop_reason]
        self.backlog.clear()
        for h in unstarted:
            self._settle(h, "release", "", "", "")
        m.drain["released_unstarted"] += len(unstarted)
        await self._flush_now()
        await self._release_orphans(final=False)
        if unstarted:
            log.info("handed back unstarted jobs", extra={"count": len(unstarted)})
        # let running jobs finish until the deadline (or a second signal)
        started_at = self._stop_requested_at or time.monotonic()
        deadline = started_at + self.settings.drain_seconds
        while self.running and not self._force.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._space.clear()
            waiters = [
                asyncio.ensure_future(self._space.wait()),
                asyncio.ensure_future(self._force.wait()),
            ]
            await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
        # deadline: cancel what is left and hand it back without consuming a retry
        runners = [h.runner for h in self.held.values() if h.runner is not None]
        if runners:
            log.warning(
                "drain deadline: handing back unfinished jobs", extra={"count": len(runners)}
            )
            for h in list(self.held.values()):
                if not h.stop_reason:
                    h.stop_reason = "drain"
                self._stop_job(h)
            await asyncio.wait(runners, timeout=CANCEL_GRACE_SECONDS)
        await self._flush_now()
        # last: hand back whatever is still pending for this consumer, including a job whose
        # code ignored cancellation (its late completion is then rejected by the fencing)
        await self._release_orphans(final=True)

    async def _flush_now(self) -> None:
        if self._settle_buf:
            self._settle_wake.set()
        deadline = time.monotonic() + max(5.0, self.settings.drain_seconds)
        while not self._settle_idle.is_set() or self._settle_buf:
            if time.monotonic() > deadline:
                log.error("could not settle all jobs before exit; their leases will expire")
                return
            self._settle_wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settle_idle.wait(), 0.5)

    async def _release_orphans(self, final: bool) -> None:
        """Hand back entries pending for this consumer that it does not hold (all of them when
        ``final``, which also removes the consumer from the group)."""
        keep = [] if final else [f"{h.band}:{h.entry}" for h in self.held.values()]
        try:
            n = await SCRIPTS.orphans.arun(
                self.redis,
                [self.keys.ready[1]],
                [self.keys.prefix, self.consumer, 1 if final else 0, *keep],
            )
        except _REDIS_ERRORS as exc:
            log.error("could not hand back orphaned entries", extra={"error": str(exc)})
            return
        if n:
            self.metrics.drain["released_deadline" if final else "released_unstarted"] += int(n)
            log.info("handed back entries delivered during shutdown", extra={"count": n})


def _call_in_context(ctx: Context, fn: Any, env: Envelope) -> Any:
    """Run a thread task with the job's context variables (current_job, logging)."""
    return ctx.run(fn, *env.args, **env.kwargs)


_dump_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_validate_envelope = Envelope.model_validate_json


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
    """``python -m bgq.worker MODULE [--queue Q] [--concurrency N]``; returns the exit code
    (0 after a clean drain, 2 for a configuration error)."""
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
    worker = Worker(settings, queue)
    try:
        code = asyncio.run(worker.run(install_signals=True))
    except BgqError as exc:
        print(f"bgq worker: {exc}", file=sys.stderr)
        return 1
    logging.shutdown()
    if any(t.name.startswith("bgq-task") and t.is_alive() for t in threading.enumerate()):
        # abandoned thread tasks would block interpreter exit; their jobs were handed back
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


__all__ = ["Held", "Worker", "main"]

if __name__ == "__main__":
    sys.exit(main())
