"""The executor: runs held jobs in their runtime and turns each run into a settle record.

Three runtimes behind one entry (:meth:`Executor.dispatch`): ``async def`` tasks on the event
loop, plain ``def`` tasks in a bounded thread pool, ``cpu_bound=True`` tasks in a killable child
process (:mod:`bgq.procrun`). Every runner task is referenced from its :class:`Held` until it
ends. Timeouts of async and thread tasks sit in one heap swept by the worker's ticker (no timer
per job); a child process is killed by its runner. How a run ends is decided by the pure
:func:`bgq._runtime.outcome.decide_outcome`.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import Context, copy_context
from typing import Any

from bgq._calls import (
    CANCELLED,
    RELEASE,
    Dead,
    Ok,
    Release,
    RetryAt,
    SettleRecord,
    StopReason,
)
from bgq._calls import Cancelled as CancelledRecord
from bgq._runtime.jobs import Held, JobTable
from bgq._runtime.outcome import (
    OK_NULL,
    RETURNED_NONE,
    JobFacts,
    Raised,
    RetryPolicy,
    Returned,
    RunResult,
    Stopped,
    decide_outcome,
    malformed,
)
from bgq._runtime.settler import SettleBuffer
from bgq.context import JobContext, ShutdownSignal, set_current
from bgq.errors import JobTimeout, UnknownTask
from bgq.hooks import HOOKS, Attempt
from bgq.metrics import Metrics
from bgq.procrun import ProcessRunner
from bgq.progress import decode_checkpoint
from bgq.protocol import Envelope
from bgq.task import _REGISTRY as _TASKS
from bgq.task import Task, lookup

log = logging.getLogger("bgq.worker")
_validate_envelope = Envelope.model_validate_json


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _call_in_context(ctx: Context, fn: Any, env: Envelope) -> Any:
    """Run a thread task with the job's context variables (current_job, logging)."""
    return ctx.run(fn, *env.args, **env.kwargs)


class Executor:
    """Starts held jobs while slots are free and settles each when it ends."""

    def __init__(
        self,
        table: JobTable,
        settler: SettleBuffer,
        metrics: Metrics,
        shutdown: ShutdownSignal,
        *,
        queue: str,
        concurrency: int,
        default_timeout: float,
        default_retries: int,
        retry_policy: RetryPolicy,
        thread_pool_size: int | None,
        process_pool_size: int | None,
        on_finished: Callable[[Held, SettleRecord | None], None],
        on_dispatched: Callable[[], None],
        pod: str = "",
    ) -> None:
        self.table = table
        self.settler = settler
        self.metrics = metrics
        self.shutdown = shutdown
        self.queue = queue
        self.concurrency = concurrency
        self.default_timeout = default_timeout
        self.default_retries = default_retries
        self.retry_policy = retry_policy
        self._thread_pool_size = thread_pool_size or concurrency
        self._process_pool_size = process_pool_size or os.cpu_count() or 1
        self._on_finished = on_finished
        self._on_dispatched = on_dispatched
        self.threads: ThreadPoolExecutor | None = None
        self.procs: ProcessRunner | None = None
        self.accepting = True
        """False once draining: nothing new starts."""
        self._deadlines: list[tuple[float, int, Held]] = []
        self._seq = 0
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.pod = pod
        self.flush_progress: Callable[[Held], Awaitable[None]] | None = None
        """Stores a job's pending progress/checkpoint now (the lease keeper's); called before
        a run that leaves the job unfinished (hand-back, retry) is settled."""

    def open(self) -> None:
        """Create the thread pool and the process runner."""
        self.threads = ThreadPoolExecutor(
            max_workers=self._thread_pool_size, thread_name_prefix="bgq-task"
        )
        self.procs = ProcessRunner(self._process_pool_size)

    def close(self) -> None:
        """Release the pools without waiting: abandoned thread tasks' jobs were handed back
        (the entry point exits the process even if such a thread still runs)."""
        if self.threads is not None:
            self.threads.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> int:
        """Jobs running now."""
        return self.table.running

    def dispatch(self) -> None:
        """Start backlog jobs while slots are free."""
        table = self.table
        backlog = table.backlog
        while backlog and table.running < self.concurrency and self.accepting:
            h = backlog.popleft()
            if h.stop_reason is not None:
                continue
            table.running += 1
            h.runner = asyncio.create_task(self._run(h))
        self._on_dispatched()

    def stop(self, h: Held) -> None:
        """Stop a held job for ``h.stop_reason`` (set by the caller): interrupt its runner, or,
        when it has not started, drop it from the backlog (settling a cancelled one)."""
        if h.ctx is not None:
            h.ctx.request_cancel()
        if h.runner is not None:
            h.runner.cancel()
            return
        self.table.drop_from_backlog(h)
        if h.stop_reason is StopReason.CANCEL:
            self._finish(h, CANCELLED)

    def sweep_timeouts(self) -> None:
        """Cancel async/thread jobs past their timeout (the ticker calls this every 50 ms)."""
        heap = self._deadlines
        if not heap:
            return
        now = time.perf_counter()
        while heap and heap[0][0] <= now:
            _, _, h = heapq.heappop(heap)
            runner = h.runner
            if runner is not None and not runner.done() and h.stop_reason is None:
                h.stop_reason = StopReason.TIMEOUT
                if h.ctx is not None:
                    h.ctx.request_cancel()
                runner.cancel()

    def _deadline(self, h: Held, t0: float) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (t0 + h.timeout, self._seq, h))

    async def _run(self, h: Held) -> None:
        """Run one held job and settle it. Kept lean: this is the per-job path."""
        try:
            self._finish(h, await self._execute(h))
        finally:
            self.table.running -= 1
            set_current(None)
            self.dispatch()

    async def _execute(self, h: Held) -> SettleRecord | None:
        d = h.delivery
        try:
            env = _validate_envelope(d.envelope)
        except ValueError as exc:
            return malformed("malformed-envelope", f"invalid job envelope: {exc}")
        task = _TASKS.get(env.task)
        if task is None:
            try:
                task = lookup(env.task)
            except UnknownTask as exc:
                return malformed("unknown-task", str(exc))
        max_retries = env.max_retries
        if max_retries is None:
            max_retries = task.retries if task.retries is not None else self.default_retries
        h.timeout = env.timeout or task.timeout or self.default_timeout
        saved = self.table.checkpoints.pop(h.id, None) if self.table.checkpoints else None
        ctx = JobContext(
            h.id,
            self.queue,
            env.task,
            d.attempt,
            max_retries,
            env.headers,
            env.enqueued_at,
            self.shutdown,
            last_checkpoint=decode_checkpoint(saved) if saved else None,
        )
        h.ctx = ctx
        set_current(ctx)
        now = time.time()
        h.started_ms = int(now * 1000)
        attempt: Attempt | None = None
        if HOOKS:  # e.g. bgq.otel: opens the consumer span, current while the task runs
            attempt = Attempt(ctx, d.band, self.pod, h.started_ms)
            HOOKS.before_run(attempt)
        m = self.metrics
        m.counts["started"] += 1
        m.queue_wait.observe(now - env.enqueued_at / 1000)
        t0 = time.perf_counter()
        result: RunResult
        try:
            if task.is_async:
                self._deadline(h, t0)
                value = await task.fn(*env.args, **env.kwargs)
                result = RETURNED_NONE if value is None else Returned(value)
            elif task.cpu_bound:
                result = Returned(await self._run_process(task, env, ctx, h.timeout))
            else:
                self._deadline(h, t0)
                value = await asyncio.get_running_loop().run_in_executor(
                    self.threads, _call_in_context, copy_context(), task.fn, env
                )
                result = RETURNED_NONE if value is None else Returned(value)
        except asyncio.CancelledError:
            result = Stopped(h.stop_reason or StopReason.DRAIN)
        except Exception as exc:
            result = Raised(exc, getattr(exc, "__bgq_remote_traceback__", None))
        if not isinstance(result, Stopped):
            m.run_time.observe(time.perf_counter() - t0)
        if self._debug:
            log.debug("job ran", extra={"seconds": round(time.perf_counter() - t0, 6)})
        if result is RETURNED_NONE:
            record: SettleRecord | None = OK_NULL  # decide_outcome's answer, without the call
        else:
            facts = JobFacts(
                env.task,
                d.attempt,
                max_retries,
                h.timeout,
                task.retry_on,
                task.is_async or task.cpu_bound,
            )
            record = decide_outcome(facts, self.retry_policy, result, _now_ms())
        if ctx.has_updates and self.flush_progress is not None and _unfinished(record):
            await self.flush_progress(h)  # the next attempt must find the checkpoint
        if attempt is not None:
            report_to_hooks(attempt, result, record)
        return record

    async def _run_process(
        self, task: Task[Any, Any], env: Envelope, ctx: JobContext, limit: float
    ) -> Any:
        assert self.procs is not None
        fields = {
            "job_id": ctx.job_id,
            "queue": ctx.queue,
            "task": ctx.task,
            "attempt": ctx.attempt,
            "max_retries": ctx.max_retries,
            "headers": ctx.headers,
            "enqueued_ms": ctx.enqueued_ms,
            "last_checkpoint": ctx.last_checkpoint,
        }
        try:
            return await self.procs.run(
                module=task.fn.__module__,
                name=task.task_name,
                args=env.args,
                kwargs=env.kwargs,
                ctx_fields=fields,
                time_limit=limit,
                on_update=ctx.put_updates,  # the child's progress/checkpoint reports
            )
        except TimeoutError:
            raise JobTimeout(
                f"task {env.task!r} exceeded its timeout of {limit} s; its process was killed"
            ) from None

    def _finish(self, h: Held, record: SettleRecord | None) -> None:
        """Count, log, stop holding ``h`` and queue its record (None: lease lost, forget)."""
        counts = self.metrics.counts
        if isinstance(record, Ok):
            counts["succeeded"] += 1
            if not self.accepting:
                self.metrics.drain["completed"] += 1
        elif isinstance(record, RetryAt):
            counts["failed"] += 1
            counts["retried"] += 1
            log.warning(
                "job failed, retrying",
                extra={
                    "error": record.error,
                    "retry_in_seconds": round(max(0, record.due_ms - _now_ms()) / 1000, 3),
                },
            )
        elif isinstance(record, Dead):
            counts["failed"] += 1
            counts["dead"] += 1
            log.error("job dead-lettered", extra={"reason": record.reason, "error": record.error})
        elif isinstance(record, CancelledRecord):
            counts["cancelled"] += 1
        elif isinstance(record, Release):
            self.metrics.drain["released_deadline"] += 1
        self.table.release(h)
        if record is not None:
            self.settler.add(record, h.delivery)
        self._on_finished(h, record)


def _unfinished(record: SettleRecord | None) -> bool:
    """True when the job will run again (hand-back or retry)."""
    return isinstance(record, (Release, RetryAt))


def report_to_hooks(attempt: Attempt, result: RunResult, record: SettleRecord | None) -> None:
    """Tell the hooks how the attempt ended (docs/observability.md, "Hooks")."""
    if isinstance(record, (RetryAt, Dead)):
        exc: BaseException | None = None
        if isinstance(result, Raised):
            exc = result.error
        elif isinstance(result, Stopped):  # stopped by its timeout
            exc = JobTimeout(record.error)
        if isinstance(record, RetryAt):
            retry_in = max(0.0, (record.due_ms - _now_ms()) / 1000)
            HOOKS.on_failure(attempt, exc or JobTimeout(record.error), retry_in)
            HOOKS.after_run(attempt, "retry")
            return
        if exc is not None:  # (a returned result that cannot be stored raised nothing)
            HOOKS.on_failure(attempt, exc, None)
        HOOKS.on_dead(attempt, record.reason, record.error)
        HOOKS.after_run(attempt, "dead")
    elif isinstance(record, Ok):
        HOOKS.after_run(attempt, "succeeded")
    elif isinstance(record, CancelledRecord):
        HOOKS.after_run(attempt, "cancelled")
    elif isinstance(record, Release):
        HOOKS.after_run(attempt, "handed_back")
    else:
        HOOKS.after_run(attempt, "lost")


def hand_back(table: JobTable, settler: SettleBuffer, held: list[Held]) -> None:
    """Settle not-started jobs as released (the drain: they go back to the queue at once)."""
    for h in held:
        table.release(h)
        settler.add(RELEASE, h.delivery)



__all__ = ["Executor", "hand_back"]
