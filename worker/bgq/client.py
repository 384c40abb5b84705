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

import asyncio
import contextlib
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio

from bgq.connection import async_client, sync_client, unavailable
from bgq.errors import (
    ConfigError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    PayloadError,
    WaitTimeout,
)
from bgq.protocol import PRIORITIES, Envelope, JobState, Keys, QueueName, check_job_id
from bgq.protocol import resolve_namespace as _resolve_namespace
from bgq.scripts import SCRIPTS
from bgq.stats import QueueDemand, read_demand, read_demand_sync

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_MAX_PAYLOAD = 1_048_576
WAITER_POLL_SECONDS = 1.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------------------------
# value types


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job to enqueue with its options (for ``enqueue_many``; ``enqueue_with`` builds one).

    ``delay`` (seconds or timedelta) or ``eta`` (aware datetime) schedule it; ``priority`` is
    ``"high"``, ``"normal"`` or ``"low"``; ``unique_key`` makes it unique while held: for
    ``unique_ttl`` seconds, or until the job completes when ``unique_ttl`` is None;
    ``job_id`` makes enqueue idempotent (a second enqueue with the same id changes nothing);
    ``timeout`` (seconds) and ``retries`` override the task's defaults.
    """

    task: Any
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    delay: float | dt.timedelta | None = None
    eta: dt.datetime | None = None
    priority: str | int = "normal"
    unique_key: str | None = None
    unique_ttl: float | None = None
    timeout: float | None = None
    retries: int | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """What enqueue returns: the job's id and queue, and what happened.

    ``status``: ``"enqueued"`` (created), ``"exists"`` (a job with this id already existed:
    nothing changed), ``"duplicate"`` (the unique key is held by job ``id``: nothing created).
    """

    id: str
    queue: str
    status: str

    @property
    def created(self) -> bool:
        """True when this call created the job."""
        return self.status == "enqueued"


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A snapshot of a job's record (``get``). Times are ms since the epoch (0 = not yet)."""

    id: str
    queue: str
    state: JobState
    task: str
    attempt: int
    max_retries: int | None
    enqueued_ms: int
    started_ms: int
    finished_ms: int
    result: Any
    error: str
    traceback: str
    reason: str
    lease_expiries: int
    envelope: Envelope | None
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter entry: why the job died, its last error and traceback, its envelope."""

    entry_id: str
    job_id: str
    reason: str
    error: str
    traceback: str
    dead_ms: int
    envelope: str
    task: str


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """How many dead letters were re-enqueued, and how many were skipped (kept)."""

    replayed: int
    skipped: int


# --------------------------------------------------------------------------------------------
# pure helpers shared by both clients


def task_name(task: Any) -> str:
    """The registered name of ``task``: a string, or a ``@bgq.task`` function."""
    if isinstance(task, str):
        if not task:
            raise ConfigError("task name is empty")
        return task
    name = getattr(task, "task_name", None)
    if isinstance(name, str):
        return name
    raise ConfigError(
        f"task must be a task name or a @bgq.task function, got {type(task).__name__}"
    )


def new_traceparent() -> str:
    """A fresh W3C ``traceparent`` (version 00, sampled)."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def _jsonable_culprit(task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    for i, a in enumerate(args):
        try:
            json.dumps(a, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return f"argument {i} ({type(a).__name__}) of task {task!r}: {exc}"
    for k, v in kwargs.items():
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return f"keyword argument {k!r} ({type(v).__name__}) of task {task!r}: {exc}"
    return f"the arguments of task {task!r}"


def _due_ms(spec: JobSpec, now_ms: int) -> int:
    if spec.delay is not None and spec.eta is not None:
        raise ConfigError("give either delay or eta, not both")
    if spec.delay is not None:
        seconds = (
            spec.delay.total_seconds() if isinstance(spec.delay, dt.timedelta) else spec.delay
        )
        if seconds < 0:
            raise ConfigError(f"delay must be >= 0 seconds, got {seconds}")
        return now_ms + int(seconds * 1000) if seconds > 0 else 0
    if spec.eta is not None:
        if spec.eta.tzinfo is None:
            raise ConfigError("eta must be a timezone-aware datetime (e.g. datetime.now(UTC))")
        return int(spec.eta.timestamp() * 1000)
    return 0


def _band(priority: str | int) -> int:
    if isinstance(priority, int) and not isinstance(priority, bool) and 0 <= priority <= 2:
        return priority
    if isinstance(priority, str) and priority in PRIORITIES:
        return PRIORITIES[priority]
    raise ConfigError(f"priority must be 'high', 'normal' or 'low' (or 0-2), got {priority!r}")


class _Core:
    """State and pure logic shared by :class:`Client` and :class:`AsyncClient`."""

    def __init__(  # noqa: PLR0917 - private, called from two places
        self,
        url: str | None,
        namespace: str | None,
        password: str | None,
        tls_ca_file: str | None,
        max_payload_bytes: int | None,
        result_ttl_seconds: int | None,
    ) -> None:
        self.url = url or os.environ.get("BGQ_REDIS_URL") or DEFAULT_URL
        self.password = password or os.environ.get("BGQ_REDIS_PASSWORD") or None
        self.tls_ca_file = tls_ca_file or os.environ.get("BGQ_REDIS_TLS_CA_FILE") or None
        self.namespace = _resolve_namespace(namespace)
        self.max_payload_bytes = max_payload_bytes or int(
            os.environ.get("BGQ_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD)
        )
        self.result_ttl_ms = 1000 * (
            result_ttl_seconds or int(os.environ.get("BGQ_RESULT_TTL_SECONDS", "86400"))
        )
        self._queues: dict[str, QueueName] = {}

    def queue(self, queue: str | QueueName) -> QueueName:
        if isinstance(queue, QueueName):
            return queue
        q = self._queues.get(queue)
        if q is None:
            q = QueueName.parse(queue, self.namespace)
            self._queues[queue] = q
        return q

    def enqueue_call(self, queue: str | QueueName, spec: JobSpec) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of one ``enqueue.lua`` call."""
        q = self.queue(queue)
        keys = q.keys
        name = task_name(spec.task)
        job_id = check_job_id(spec.job_id) if spec.job_id is not None else uuid.uuid4().hex
        band = _band(spec.priority)
        now = _now_ms()
        due = _due_ms(spec, now)
        headers = dict(spec.headers) if spec.headers else {}
        if "traceparent" not in headers:
            headers["traceparent"] = _current_traceparent() or new_traceparent()
        if spec.retries is not None and spec.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {spec.retries}")
        if spec.timeout is not None and spec.timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {spec.timeout}")
        env: dict[str, Any] = {
            "v": 1,
            "id": job_id,
            "task": name,
            "args": list(spec.args),
            "kwargs": dict(spec.kwargs),
            "headers": headers,
            "enqueued_at": now,
            "priority": band,
        }
        if spec.retries is not None:
            env["max_retries"] = spec.retries
        if spec.timeout is not None:
            env["timeout"] = spec.timeout
        if spec.unique_key is not None:
            env["unique_key"] = spec.unique_key
        try:
            text = json.dumps(env, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PayloadError(
                "job payload is not JSON-serialisable: "
                + _jsonable_culprit(name, spec.args, spec.kwargs)
                + ". Pass plain JSON types (str, int, float, bool, None, list, dict)."
            ) from exc
        if len(text) > self.max_payload_bytes:
            raise PayloadError(
                f"job payload of task {name!r} is {len(text)} bytes, over the limit of "
                f"{self.max_payload_bytes} bytes: store large data elsewhere (object storage, "
                "a database) and pass a reference, or raise max_payload_bytes"
            )
        unique_ttl_ms = 0
        if spec.unique_key is not None:
            if not spec.unique_key:
                raise ConfigError("unique_key is empty")
            if spec.unique_ttl is not None:
                if spec.unique_ttl <= 0:
                    raise ConfigError("unique_ttl must be > 0 seconds (None = until complete)")
                unique_ttl_ms = max(1, int(spec.unique_ttl * 1000))
        elif spec.unique_ttl is not None:
            raise ConfigError("unique_ttl needs a unique_key")
        ukey = keys.uniq(spec.unique_key) if spec.unique_key is not None else keys.job(job_id)
        return (
            [keys.job(job_id), keys.ready[band], keys.delayed, ukey, keys.wake],
            [job_id, text, band, due, now, spec.unique_key or "", unique_ttl_ms, str(q)],
        )

    @staticmethod
    def spec(
        task: Any,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> JobSpec:
        try:
            return JobSpec(task, args, kwargs or {}, **options)
        except TypeError as exc:
            raise ConfigError(f"unknown enqueue option: {exc}") from exc

    def info(self, queue: QueueName, job_id: str, h: Mapping[Any, Any]) -> JobInfo:
        """Parse a job hash (HGETALL) into a :class:`JobInfo`."""
        if not h or "state" not in h:
            raise JobNotFound(
                f"job {job_id!r} not found in queue {queue}: never enqueued there, or its "
                "record expired (results are kept for the result TTL)"
            )
        env: Envelope | None = None
        try:
            env = Envelope.model_validate_json(h.get("env", ""))
        except ValueError:
            env = None
        result: Any = None
        if "result" in h:
            try:
                result = json.loads(h["result"])
            except ValueError:
                result = h["result"]
        return JobInfo(
            id=job_id,
            queue=str(queue),
            state=JobState(h["state"]),
            task=env.task if env else "",
            attempt=int(h.get("attempt", 1)),
            max_retries=env.max_retries if env else None,
            enqueued_ms=int(h.get("enqueued_ms", 0) or 0),
            started_ms=int(h.get("started_ms", 0) or 0),
            finished_ms=int(h.get("finished_ms", 0) or 0),
            result=result,
            error=h.get("error", ""),
            traceback=h.get("traceback", ""),
            reason=h.get("reason", ""),
            lease_expiries=int(h.get("expiries", 0) or 0),
            envelope=env,
            cancel_requested=h.get("cancel") == "1",
        )

    @staticmethod
    def outcome(info: JobInfo) -> Any:
        if info.state is JobState.SUCCEEDED:
            return info.result
        if info.state is JobState.DEAD:
            raise JobFailed(info.id, info.error, info.traceback, info.reason)
        raise JobCancelled(info.id)

    @staticmethod
    def dead_letters(entries: Any) -> list[DeadLetter]:
        out = []
        for entry_id, fields in entries:
            if isinstance(fields, dict):
                f = dict(fields)
            else:
                f = dict(zip(fields[::2], fields[1::2], strict=False))
            env = f.get("env", "")
            task = ""
            if env:
                with contextlib.suppress(ValueError, AttributeError):
                    task = str(json.loads(env).get("task", ""))
            out.append(
                DeadLetter(
                    entry_id=entry_id,
                    job_id=f.get("id", ""),
                    reason=f.get("reason", ""),
                    error=f.get("error", ""),
                    traceback=f.get("traceback", ""),
                    dead_ms=int(f.get("dead_ms", 0) or 0),
                    envelope=env,
                    task=task,
                )
            )
        return out


def _current_traceparent() -> str | None:
    from bgq.context import current_traceparent

    return current_traceparent()


def _statuses(reply: Any, queue: QueueName) -> Job:
    return Job(id=str(reply[1]), queue=str(queue), status=str(reply[0]))


@contextlib.contextmanager
def _guard(url: str) -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise unavailable(url, exc) from exc


# --------------------------------------------------------------------------------------------
# the blocking client


class Client:
    """Blocking producer client. Thread-safe (redis-py's connection pool). See module doc."""

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str | None = None,
        password: str | None = None,
        tls_ca_file: str | None = None,
        max_payload_bytes: int | None = None,
        result_ttl_seconds: int | None = None,
        redis_client: redis.Redis | None = None,
    ) -> None:
        """Connect lazily to ``url`` (default ``BGQ_REDIS_URL``, else localhost:6379/0)."""
        self._core = _Core(
            url, namespace, password, tls_ca_file, max_payload_bytes, result_ttl_seconds
        )
        self.redis = redis_client or sync_client(
            self._core.url, self._core.password, self._core.tls_ca_file
        )

    @property
    def namespace(self) -> str:
        """Namespace bare queue names resolve against."""
        return self._core.namespace

    def close(self) -> None:
        """Close the connection pool."""
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue(self, queue: str | QueueName, task: Any, *args: Any, **kwargs: Any) -> Job:
        """Enqueue ``task(*args, **kwargs)`` now with default options. One round trip."""
        return self.enqueue_with(queue, task, args=args, kwargs=kwargs)

    def enqueue_with(
        self,
        queue: str | QueueName,
        task: Any,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Enqueue with options (the fields of :class:`JobSpec`: job_id, delay, eta, priority,
        unique_key, unique_ttl, timeout, retries, headers)."""
        q = self._core.queue(queue)
        keys, argv = self._core.enqueue_call(q, self._core.spec(task, args, kwargs, options))
        with _guard(self._core.url):
            return _statuses(SCRIPTS.enqueue.run(self.redis, keys, argv), q)

    def enqueue_many(
        self, queue: str | QueueName, jobs: Iterable[JobSpec], chunk: int = 1000
    ) -> list[Job]:
        """Enqueue many jobs, pipelined ``chunk`` at a time (one round trip per chunk)."""
        q = self._core.queue(queue)
        calls = [self._core.enqueue_call(q, spec) for spec in jobs]
        out: list[Job] = []
        script = SCRIPTS.enqueue
        with _guard(self._core.url):
            for start in range(0, len(calls), chunk):
                part = calls[start : start + chunk]
                for attempt in range(2):
                    pipe = self.redis.pipeline(transaction=False)
                    for keys, argv in part:
                        pipe.evalsha(script.sha, len(keys), *keys, *argv)
                    try:
                        replies = pipe.execute()
                        break
                    except redis.exceptions.NoScriptError:
                        if attempt:
                            raise
                        self.redis.script_load(script.text)
                out.extend(_statuses(r, q) for r in replies)
        return out

    def get(self, queue: str | QueueName, job_id: str) -> JobInfo:
        """The job's record; raises :class:`JobNotFound`."""
        q = self._core.queue(queue)
        with _guard(self._core.url):
            h = self.redis.hgetall(q.keys.job(job_id))
        return self._core.info(q, job_id, h)

    def wait(self, queue: str | QueueName, job_id: str, timeout: float = 30.0) -> Any:
        """Block until the job is final; return its result.

        Raises :class:`JobFailed` (dead), :class:`JobCancelled`, :class:`WaitTimeout`,
        :class:`JobNotFound`. Costs nothing on the worker side unless someone waits.
        """
        q = self._core.queue(queue)
        keys = q.keys
        deadline = time.monotonic() + timeout
        with _guard(self._core.url):
            while True:
                info = self.get(q, job_id)
                if info.state.final:
                    return self._core.outcome(info)
                pipe = self.redis.pipeline(transaction=True)
                pipe.hset(keys.job(job_id), "w", "1")
                pipe.hget(keys.job(job_id), "state")
                _, state = pipe.execute()
                if state is None:
                    self.redis.delete(keys.job(job_id))
                    continue
                if JobState(state).final:
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"job {job_id} in {q} not finished after {timeout} s")
                self.redis.blpop([keys.done(job_id)], timeout=min(left, WAITER_POLL_SECONDS))

    def cancel(self, queue: str | QueueName, job_id: str) -> str:
        """Cancel a job: ``"cancelled"``, ``"cancelling"`` (running; the worker cancels it at
        its next lease renewal), ``"missing"``, or the state it had already finished in."""
        q = self._core.queue(queue)
        keys = q.keys
        with _guard(self._core.url):
            return str(
                SCRIPTS.cancel.run(
                    self.redis,
                    [keys.job(job_id)],
                    [keys.prefix, job_id, _now_ms(), self._core.result_ttl_ms],
                )
            )

    def stats(self, queue: str | QueueName, due_window_ms: int = 0) -> QueueDemand:
        """Backlog, in-flight, delayed, due, dead, oldest age and worker heartbeats."""
        q = self._core.queue(queue)
        with _guard(self._core.url):
            return read_demand_sync(self.redis, [q], _now_ms(), due_window_ms)[str(q)]

    def dead_letters(
        self, queue: str | QueueName, limit: int = 100, after: str | None = None
    ) -> list[DeadLetter]:
        """Dead letters, oldest first; page with ``after=<last entry_id>``."""
        q = self._core.queue(queue)
        start = f"({after}" if after else "-"
        with _guard(self._core.url):
            entries = self.redis.xrange(q.keys.dead, start, "+", count=limit)
        return self._core.dead_letters(entries)

    def replay_dead(
        self, queue: str | QueueName, entry_ids: Sequence[str] | None = None
    ) -> ReplayResult:
        """Re-enqueue dead letters (all of them when ``entry_ids`` is None) as fresh jobs."""
        q = self._core.queue(queue)
        keys = q.keys
        replayed = skipped = 0
        with _guard(self._core.url):
            if entry_ids is not None:
                ids = list(entry_ids)
                for i in range(0, len(ids), 500):
                    r = SCRIPTS.replay.run(
                        self.redis,
                        [keys.dead],
                        [keys.prefix, _now_ms(), 500, "", *ids[i : i + 500]],
                    )
                    replayed, skipped = replayed + int(r[0]), skipped + int(r[1])
                return ReplayResult(replayed, skipped)
            cursor = "0-0"
            while True:
                r = SCRIPTS.replay.run(
                    self.redis, [keys.dead], [keys.prefix, _now_ms(), 500, cursor]
                )
                replayed, skipped = replayed + int(r[0]), skipped + int(r[1])
                if not r[2]:
                    return ReplayResult(replayed, skipped)
                cursor = str(r[2])

    def purge_dead(self, queue: str | QueueName, entry_ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all when ``entry_ids`` is None); returns how many."""
        q = self._core.queue(queue)
        with _guard(self._core.url):
            if entry_ids is not None:
                return int(self.redis.xdel(q.keys.dead, *entry_ids)) if entry_ids else 0
            pipe = self.redis.pipeline(transaction=True)
            pipe.xlen(q.keys.dead)
            pipe.delete(q.keys.dead)
            n, _ = pipe.execute()
            return int(n)


# --------------------------------------------------------------------------------------------
# the asyncio client


class AsyncClient:
    """asyncio producer client with the same methods as :class:`Client`, awaited."""

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str | None = None,
        password: str | None = None,
        tls_ca_file: str | None = None,
        max_payload_bytes: int | None = None,
        result_ttl_seconds: int | None = None,
        redis_client: redis.asyncio.Redis | None = None,
    ) -> None:
        """Connect lazily to ``url`` (default ``BGQ_REDIS_URL``, else localhost:6379/0)."""
        self._core = _Core(
            url, namespace, password, tls_ca_file, max_payload_bytes, result_ttl_seconds
        )
        self.redis = redis_client or async_client(
            self._core.url, self._core.password, self._core.tls_ca_file
        )

    @property
    def namespace(self) -> str:
        """Namespace bare queue names resolve against."""
        return self._core.namespace

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def enqueue(self, queue: str | QueueName, task: Any, *args: Any, **kwargs: Any) -> Job:
        """Enqueue ``task(*args, **kwargs)`` now with default options. One round trip."""
        return await self.enqueue_with(queue, task, args=args, kwargs=kwargs)

    async def enqueue_with(
        self,
        queue: str | QueueName,
        task: Any,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Enqueue with options (the fields of :class:`JobSpec`)."""
        q = self._core.queue(queue)
        keys, argv = self._core.enqueue_call(q, self._core.spec(task, args, kwargs, options))
        with _guard(self._core.url):
            return _statuses(await SCRIPTS.enqueue.arun(self.redis, keys, argv), q)

    async def enqueue_many(
        self, queue: str | QueueName, jobs: Iterable[JobSpec], chunk: int = 1000
    ) -> list[Job]:
        """Enqueue many jobs, pipelined ``chunk`` at a time (one round trip per chunk)."""
        q = self._core.queue(queue)
        calls = [self._core.enqueue_call(q, spec) for spec in jobs]
        out: list[Job] = []
        script = SCRIPTS.enqueue
        with _guard(self._core.url):
            for start in range(0, len(calls), chunk):
                part = calls[start : start + chunk]
                for attempt in range(2):
                    pipe = self.redis.pipeline(transaction=False)
                    for keys, argv in part:
                        pipe.evalsha(script.sha, len(keys), *keys, *argv)
                    try:
                        replies = await pipe.execute()
                        break
                    except redis.exceptions.NoScriptError:
                        if attempt:
                            raise
                        await self.redis.script_load(script.text)
                out.extend(_statuses(r, q) for r in replies)
        return out

    async def get(self, queue: str | QueueName, job_id: str) -> JobInfo:
        """The job's record; raises :class:`JobNotFound`."""
        q = self._core.queue(queue)
        with _guard(self._core.url):
            h = await self.redis.hgetall(q.keys.job(job_id))
        return self._core.info(q, job_id, h)

    async def wait(
        self,
        queue: str | QueueName,
        job_id: str,
        timeout: float = 30.0,  # noqa: ASYNC109 - same signature as Client.wait
    ) -> Any:
        """Wait until the job is final; return its result (errors as :meth:`Client.wait`)."""
        q = self._core.queue(queue)
        keys = q.keys
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with _guard(self._core.url):
            while True:
                info = await self.get(q, job_id)
                if info.state.final:
                    return self._core.outcome(info)
                pipe = self.redis.pipeline(transaction=True)
                pipe.hset(keys.job(job_id), "w", "1")
                pipe.hget(keys.job(job_id), "state")
                _, state = await pipe.execute()
                if state is None:
                    await self.redis.delete(keys.job(job_id))
                    continue
                if JobState(state).final:
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    raise WaitTimeout(f"job {job_id} in {q} not finished after {timeout} s")
                await self.redis.blpop([keys.done(job_id)], timeout=min(left, WAITER_POLL_SECONDS))

    async def cancel(self, queue: str | QueueName, job_id: str) -> str:
        """Cancel a job (see :meth:`Client.cancel`)."""
        q = self._core.queue(queue)
        keys = q.keys
        with _guard(self._core.url):
            return str(
                await SCRIPTS.cancel.arun(
                    self.redis,
                    [keys.job(job_id)],
                    [keys.prefix, job_id, _now_ms(), self._core.result_ttl_ms],
                )
            )

    async def stats(self, queue: str | QueueName, due_window_ms: int = 0) -> QueueDemand:
        """Backlog, in-flight, delayed, due, dead, oldest age and worker heartbeats."""
        q = self._core.queue(queue)
        with _guard(self._core.url):
            return (await read_demand(self.redis, [q], _now_ms(), due_window_ms))[str(q)]

    async def dead_letters(
        self, queue: str | QueueName, limit: int = 100, after: str | None = None
    ) -> list[DeadLetter]:
        """Dead letters, oldest first; page with ``after=<last entry_id>``."""
        q = self._core.queue(queue)
        start = f"({after}" if after else "-"
        with _guard(self._core.url):
            entries = await self.redis.xrange(q.keys.dead, start, "+", count=limit)
        return self._core.dead_letters(entries)

    async def replay_dead(
        self, queue: str | QueueName, entry_ids: Sequence[str] | None = None
    ) -> ReplayResult:
        """Re-enqueue dead letters (all when ``entry_ids`` is None) as fresh jobs."""
        q = self._core.queue(queue)
        keys = q.keys
        replayed = skipped = 0
        with _guard(self._core.url):
            if entry_ids is not None:
                ids = list(entry_ids)
                for i in range(0, len(ids), 500):
                    r = await SCRIPTS.replay.arun(
                        self.redis,
                        [keys.dead],
                        [keys.prefix, _now_ms(), 500, "", *ids[i : i + 500]],
                    )
                    replayed, skipped = replayed + int(r[0]), skipped + int(r[1])
                return ReplayResult(replayed, skipped)
            cursor = "0-0"
            while True:
                r = await SCRIPTS.replay.arun(
                    self.redis, [keys.dead], [keys.prefix, _now_ms(), 500, cursor]
                )
                replayed, skipped = replayed + int(r[0]), skipped + int(r[1])
                if not r[2]:
                    return ReplayResult(replayed, skipped)
                cursor = str(r[2])

    async def purge_dead(
        self, queue: str | QueueName, entry_ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead letters (all when ``entry_ids`` is None); returns how many."""
        q = self._core.queue(queue)
        with _guard(self._core.url):
            if entry_ids is not None:
                return int(await self.redis.xdel(q.keys.dead, *entry_ids)) if entry_ids else 0
            pipe = self.redis.pipeline(transaction=True)
            pipe.xlen(q.keys.dead)
            pipe.delete(q.keys.dead)
            n, _ = await pipe.execute()
            return int(n)


__all__ = [
    "AsyncClient",
    "Client",
    "DeadLetter",
    "Job",
    "JobInfo",
    "JobSpec",
    "Keys",
    "ReplayResult",
]
