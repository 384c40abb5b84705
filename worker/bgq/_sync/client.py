# GENERATED from bgq/_async/client.py by hack/gen-sync-client: edit the source, not this.
"""The producer client's I/O driver, asyncio flavour: the SOURCE of ``bgq._sync.client``.

Every decision lives in :mod:`bgq._client_core`; this module only performs the Redis calls.
Edit this file, then run ``make sync-client`` (``hack/gen-sync-client``) to regenerate the blocking
client; ``make lint`` fails when the generated file is out of date.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis

from bgq._client_core import (
    WAITER_POLL_SECONDS,
    DeadLetter,
    Job,
    JobInfo,
    JobSpec,
    ProgressWatch,
    ReplayResult,
    SyncRedis,
    _Core,
    _guard,
    _now_ms,
    _statuses,
)
from bgq._listing_core import JobPage
from bgq._sync.listing import list_jobs as _list_jobs
from bgq.connection import run_durable, sync_client
from bgq.errors import ConfigError, NotReplicated, WaitTimeout
from bgq.progress import Progress
from bgq.protocol import JobState, QueueName
from bgq.scripts import SCRIPTS
from bgq.settings import RedisSettings
from bgq.stats import QueueDemand, read_demand_sync


class Client:
    """Producer client (see :mod:`bgq.client`). ``AsyncClient``'s methods are awaited; the
    blocking ``Client`` is generated from this class and is thread-safe (redis-py's pool)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str | None = None,
        password: str | None = None,
        tls_ca_file: str | None = None,
        max_payload_bytes: int | None = None,
        result_ttl_seconds: int | None = None,
        redis_client: SyncRedis | None = None,
        redis_settings: RedisSettings | None = None,
        wait_replicas: int = 0,
        wait_timeout_seconds: float = 1.0,
    ) -> None:
        """Connect to ``url`` (default ``BGQ_REDIS_URL``, else localhost:6379/0) in the mode of
        ``BGQ_REDIS_MODE``, or to ``redis_settings`` (a cluster or Sentinel: see
        :class:`bgq.settings.RedisSettings`). ``wait_replicas=N``: durable enqueue, each
        ``enqueue``/``enqueue_with`` returns only once N replicas have the job (WAIT), else
        raises :class:`bgq.errors.NotReplicated` (retry with the same job_id)."""
        self._core = _Core(
            url,
            namespace,
            password,
            tls_ca_file,
            max_payload_bytes,
            result_ttl_seconds,
            redis_settings,
        )
        if wait_replicas < 0 or wait_timeout_seconds <= 0:
            raise ConfigError("wait_replicas must be >= 0 and wait_timeout_seconds > 0")
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = max(1, int(wait_timeout_seconds * 1000))
        self.redis = redis_client or sync_client(self._core.settings)

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
        with _guard(self._core.settings):
            if not self.wait_replicas:
                return _statuses(SCRIPTS.enqueue.run(self.redis, keys, argv), q)
            reply, confirmed = run_durable(
                self.redis,
                SCRIPTS.enqueue,
                keys,
                argv,
                replicas=self.wait_replicas,
                timeout_ms=self.wait_timeout_ms,
            )
        job = _statuses(reply, q)
        if confirmed < self.wait_replicas:
            raise NotReplicated(
                f"job {job.id} in {q} is on the primary but only {confirmed} of "
                f"{self.wait_replicas} replicas confirmed it within {self.wait_timeout_ms} ms: "
                "retry with the same job_id (it answers 'exists')"
            )
        return job

    def enqueue_many(
        self, queue: str | QueueName, jobs: Iterable[JobSpec], chunk: int = 1000
    ) -> list[Job]:
        """Enqueue many jobs, pipelined ``chunk`` at a time (one round trip per chunk)."""
        q = self._core.queue(queue)
        calls = [self._core.enqueue_call(q, spec) for spec in jobs]
        out: list[Job] = []
        script = SCRIPTS.enqueue
        with _guard(self._core.settings):
            for start in range(0, len(calls), chunk):
                part = calls[start : start + chunk]
                for attempt in range(2):
                    pipe = self.redis.pipeline(transaction=False)
                    for keys, argv in part:
                        script.pipe(pipe, keys, argv)  # cluster pipelines block evalsha()
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
        with _guard(self._core.settings):
            h = self.redis.hgetall(q.keys.job(job_id))
        return self._core.info(q, job_id, h)

    def wait(
        self,
        queue: str | QueueName,
        job_id: str,
        timeout: float = 30.0,  # noqa: ASYNC109, RUF100 - the blocking Client's signature too
        *,
        on_progress: Callable[[Progress], object] | None = None,
    ) -> Any:
        """Wait until the job is final; return its result.

        ``on_progress(progress)`` is called with each new progress report seen (at most once
        a second; reports are stored at the worker's lease renewals; a plain function).
        Raises :class:`JobFailed` (dead), :class:`JobCancelled`, :class:`WaitTimeout`,
        :class:`JobNotFound`. Costs nothing on the worker side unless someone waits.
        """
        q = self._core.queue(queue)
        keys = q.keys
        deadline = time.monotonic() + timeout
        seen = ProgressWatch(on_progress)
        with _guard(self._core.settings):
            while True:
                info = self.get(q, job_id)
                seen.check(info)
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
        with _guard(self._core.settings):
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
        with _guard(self._core.settings):
            return (read_demand_sync(self.redis, [q], _now_ms(), due_window_ms))[str(q)]

    def dead_letters(
        self, queue: str | QueueName, limit: int = 100, after: str | None = None
    ) -> list[DeadLetter]:
        """Dead letters, oldest first; page with ``after=<last entry_id>``."""
        q = self._core.queue(queue)
        start = f"({after}" if after else "-"
        with _guard(self._core.settings):
            entries = self.redis.xrange(q.keys.dead, start, "+", count=limit)
        return self._core.dead_letters(entries)

    def replay_dead(
        self, queue: str | QueueName, entry_ids: Sequence[str] | None = None
    ) -> ReplayResult:
        """Re-enqueue dead letters (all when ``entry_ids`` is None) as fresh jobs."""
        q = self._core.queue(queue)
        keys = q.keys
        replayed = skipped = 0
        with _guard(self._core.settings):
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
        with _guard(self._core.settings):
            if entry_ids is not None:
                return int(self.redis.xdel(q.keys.dead, *entry_ids)) if entry_ids else 0
            pipe = self.redis.pipeline(transaction=True)
            pipe.xlen(q.keys.dead)
            pipe.delete(q.keys.dead)
            n, _ = pipe.execute()
            return int(n)

    def list_jobs(
        self,
        queue: str | QueueName,
        *,
        states: Sequence[str] | None = None,
        task: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of jobs by state (queued, running, scheduled, retrying, dead) and task name;
        pass ``page.cursor`` back for the next page (None: done). See :mod:`bgq.listing`."""
        q = self._core.queue(queue)
        with _guard(self._core.settings):
            return _list_jobs(self.redis, q, states=states, task=task, limit=limit, cursor=cursor)


__all__ = ["Client"]
