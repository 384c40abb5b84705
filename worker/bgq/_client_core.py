"""What the producer clients share: value types, the pure per-call logic (``_Core``) and the
one translation of Redis connection errors (``_guard``). ``bgq.client`` is the public module;
the I/O drivers are ``bgq._async.client`` (source of truth) and ``bgq._sync.client`` (generated
from it by ``hack/gen-sync-client``: ``make lint`` fails when the two drift)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bgq import safejson
from bgq.connection import AsyncRedis, SyncRedis, redis_errors
from bgq.errors import (
    ConfigError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    PayloadError,
    PayloadTooLarge,
)
from bgq.hooks import HOOKS, EnqueueJob
from bgq.progress import Progress, decode_checkpoint, decode_progress
from bgq.protocol import PRIORITIES, Envelope, JobState, QueueName, check_job_id
from bgq.protocol import resolve_namespace as _resolve_namespace
from bgq.settings import DEFAULT_REDIS_URL, ClientSettings, RedisSettings

DEFAULT_URL = DEFAULT_REDIS_URL
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
    progress: Progress | None = None
    """The last ``current_job().progress(...)`` the job reported (stored at lease renewals)."""
    checkpoint: Any = None
    """The last ``current_job().checkpoint(...)``: the next attempt resumes from it."""


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
        redis_settings: RedisSettings | None = None,
    ) -> None:
        if redis_settings is None:
            # BGQ_REDIS_* from the environment (mode, nodes, ...); arguments override
            redis_env = RedisSettings()
            redis_settings = redis_env.model_copy(
                update={
                    "url": url or redis_env.url or DEFAULT_URL,
                    "password": password or redis_env.password or None,
                    "tls_ca_file": tls_ca_file or redis_env.tls_ca_file or None,
                }
            )
        self.settings = redis_settings
        self.url = redis_settings.url
        env = ClientSettings()
        self.namespace = _resolve_namespace(namespace)
        self.max_payload_bytes = max_payload_bytes or env.max_payload_bytes
        self.result_ttl_ms = 1000 * (result_ttl_seconds or env.result_ttl_seconds)
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
        if HOOKS:  # e.g. bgq.otel's producer span puts its traceparent here
            HOOKS.before_enqueue(EnqueueJob(str(q), name, job_id, headers, band, due))
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
        safejson.check(env, what=f"job payload of task {name!r}")
        try:
            text = json.dumps(env, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PayloadError(
                "job payload is not JSON-serialisable: "
                + _jsonable_culprit(name, spec.args, spec.kwargs)
                + ". Pass plain JSON types (str, int, float, bool, None, list, dict)."
            ) from exc
        if len(text) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"job payload of task {name!r} is {len(text)} bytes, over the limit of "
                f"{self.max_payload_bytes} bytes: store large data elsewhere (object storage, "
                "a database) and pass a reference, or raise max_payload_bytes",
                len(text),
                self.max_payload_bytes,
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
            [job_id, text, band, due, now, spec.unique_key or "", unique_ttl_ms, str(q),
             _wake_trace(headers.get("traceparent"))],
        )  # fmt: skip

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
            progress=decode_progress(h.get("progress")),
            checkpoint=decode_checkpoint(h.get("checkpoint")),
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


class ProgressWatch:
    """Calls ``on_progress`` once per new progress report seen by a waiting loop."""

    __slots__ = ("callback", "last")

    def __init__(self, callback: Callable[[Progress], object] | None) -> None:
        self.callback = callback
        self.last: Progress | None = None

    def check(self, info: JobInfo) -> None:
        """Call back if ``info`` carries a progress report not seen before."""
        if self.callback is not None and info.progress is not None and info.progress != self.last:
            self.last = info.progress
            self.callback(info.progress)


def _wake_trace(traceparent: Any) -> str:
    """ARGV[9] of enqueue.lua: the job's traceparent, stored with a wake-up (""= none)."""
    if isinstance(traceparent, str) and 0 < len(traceparent) <= MAX_WAKE_TRACE:
        return traceparent
    return ""


MAX_WAKE_TRACE = 256
"""A longer traceparent header is not copied next to the wake-up (W3C's is 55 characters)."""


def _current_traceparent() -> str | None:
    from bgq.context import current_traceparent

    return current_traceparent()


def _statuses(reply: Any, queue: QueueName) -> Job:
    return Job(id=str(reply[1]), queue=str(queue), status=str(reply[0]))


def _guard(settings: RedisSettings) -> contextlib.AbstractContextManager[None]:
    """Redis failures inside the block become bgq errors naming the setting
    (:func:`bgq.connection.translate`)."""
    return redis_errors(settings)


__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_URL",
    "WAITER_POLL_SECONDS",
    "AsyncRedis",
    "DeadLetter",
    "Job",
    "JobInfo",
    "JobSpec",
    "ReplayResult",
    "SyncRedis",
    "new_traceparent",
    "task_name",
]
