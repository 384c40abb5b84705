"""The schedule loop: fire ``spec.schedules[]`` ticks as jobs ``sched:<name>:<tick epoch>``.

Exactly once without leader election: the job id of a tick is a function of the schedule and
the tick, and the enqueue script is idempotent (``exists`` when the id is taken), so two
operators, a restart mid-tick or a retried enqueue all end in one job per tick. What a tick
did is kept in Redis (``P:schedules``, :mod:`bgq.control`), not in the operator: a restarted
operator, or a second one, continues from the last tick handled and fires missed ticks within
``catchUp`` (``bgq_operator.cron.due_ticks``).

:func:`run_schedules` is the Redis part (no Kubernetes), used by :class:`Scheduler`, the
operator's loop, which also writes ``status.schedules`` and posts events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import redis.exceptions

from bgq.client import AsyncClient
from bgq.connection import AsyncRedis
from bgq.control import schedules_key
from bgq.errors import BgqError
from bgq.protocol import JobState, QueueName
from bgq_operator.cron import (
    OverlapAction,
    Schedule,
    due_ticks,
    overlap_action,
    rfc3339_at,
    tick_job_id,
)
from bgq_operator.spec import ScheduleSpec, ScheduleStatus

log = logging.getLogger("bgq_operator.schedules")

LOOP_S = 1.0
"""The loop looks at every schedule at least this often (ticks fire within ~1 s)."""
_REDIS_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError, BgqError)


@dataclass(frozen=True, slots=True)
class TickOutcome:
    """What happened to one tick (or to a batch of missed ones)."""

    schedule: str
    outcome: str
    """fired, exists, skipped, replaced, missed, error."""
    tick: float | None
    job_id: str | None
    detail: str = ""


def _definition(spec: ScheduleSpec) -> dict[str, Any]:
    return {
        "cron": spec.cron,
        "timeZone": spec.time_zone,
        "task": spec.task,
        "args": list(spec.args or []),
        "kwargs": dict(spec.kwargs or {}),
        "priority": spec.priority,
        "overlap": spec.overlap,
        "suspend": spec.suspend,
        "warmSeconds": spec.warm_seconds,
        "catchUp": {
            "maxTicks": spec.catch_up.max_ticks,
            "windowSeconds": spec.catch_up.window_seconds,
        },
    }


async def _previous_final(
    r: AsyncRedis, queue: QueueName, job_id: str | None
) -> bool | None:
    if not job_id:
        return None
    state = await r.hget(queue.keys.job(job_id), "state")
    if state is None:
        return None  # expired or never created: nothing overlaps
    return JobState(str(state)).final


async def _fire_one(
    client: AsyncClient, spec: ScheduleSpec, queue: QueueName, tick: float, previous: str | None
) -> TickOutcome:
    r = client.redis
    action = overlap_action(spec.overlap, await _previous_final(r, queue, previous))
    job_id = tick_job_id(spec.name, tick)
    if action is OverlapAction.SKIP:
        return TickOutcome(
            spec.name, "skipped", tick, previous,
            f"previous job {previous} is not final (overlap Skip)",
        )  # fmt: skip
    detail = ""
    if action is OverlapAction.REPLACE and previous:
        detail = f"previous job {previous}: {await client.cancel(queue, previous)}"
    job = await client.enqueue_with(
        queue, spec.task, args=list(spec.args or []), kwargs=dict(spec.kwargs or {}),
        priority=spec.priority, job_id=job_id,
    )  # fmt: skip
    outcome = "fired" if job.created else "exists"
    if action is OverlapAction.REPLACE and job.created:
        outcome = "replaced"
    return TickOutcome(spec.name, outcome, tick, job_id, detail)


async def run_schedules(
    client: AsyncClient,
    queue: QueueName,
    schedules: Sequence[ScheduleSpec],
    now: float,
    known: dict[str, str] | None = None,
) -> tuple[list[TickOutcome], dict[str, dict[str, Any]]]:
    """Handle every tick of ``schedules`` due at ``now``; return outcomes and the records.

    ``known`` caches the records last written (name -> JSON) so an unchanged record is not
    written again. Raises a Redis error when Redis is unreachable: nothing is advanced then,
    so the ticks fire on recovery (within catch-up).
    """
    r = client.redis
    key = schedules_key(queue)
    raw = await r.hgetall(key)
    known = {} if known is None else known
    outcomes: list[TickOutcome] = []
    records: dict[str, dict[str, Any]] = {}
    names = {s.name for s in schedules}
    stale = [str(n) for n in raw if str(n) not in names]
    if stale:
        await r.hdel(key, *stale)
    for spec in schedules:
        try:
            record = json.loads(raw.get(spec.name) or "{}")
        except ValueError:
            record = {}
        if not isinstance(record, dict):
            record = {}
        last = record.get("lastTick")
        last_tick = float(last) if isinstance(last, int | float) else None
        sched = Schedule(
            spec.cron, spec.time_zone, spec.catch_up.max_ticks,
            float(spec.catch_up.window_seconds),
        )  # fmt: skip
        due = due_ticks(sched, last_tick, now)
        new = {**record, **_definition(spec)}
        new["nextTick"] = due.next
        if last_tick is None:
            new["lastTick"] = now  # first sight: start counting from now, nothing from the past
        missed = due.missed
        if spec.suspend:
            missed += len(due.fire)
        else:
            for tick in due.fire:
                out = await _fire_one(client, spec, queue, tick, new.get("lastJobId"))
                outcomes.append(out)
                new["lastTick"] = tick
                new["lastOutcome"] = out.outcome
                if out.outcome != "skipped":
                    new["lastJobId"] = out.job_id
        if due.fire and not spec.suspend:
            new["lastTick"] = due.fire[-1]
        elif missed:
            new["lastTick"] = now
        if missed:
            new["missed"] = int(record.get("missed") or 0) + missed
            if not due.fire or spec.suspend:
                new["lastOutcome"] = "missed"
            why = "suspended" if spec.suspend else "older than catchUp allows"
            outcomes.append(TickOutcome(spec.name, "missed", None, None, f"{missed} tick(s) {why}"))
        text = json.dumps(new, sort_keys=True, separators=(",", ":"))
        if known.get(spec.name) != text or raw.get(spec.name) != text:
            await r.hset(key, spec.name, text)
            known[spec.name] = text
        records[spec.name] = new
    return outcomes, records


def status_of(records: dict[str, dict[str, Any]]) -> list[ScheduleStatus]:
    """``status.schedules`` from the records."""
    out = []
    for name, rec in sorted(records.items()):
        last = rec.get("lastTick") if rec.get("lastOutcome") else None
        nxt = rec.get("nextTick")
        out.append(
            ScheduleStatus(
                name=name,
                last_tick=rfc3339_at(float(last)) if last is not None else None,
                last_job_id=rec.get("lastJobId") or None,
                last_outcome=rec.get("lastOutcome") or None,
                next_tick=rfc3339_at(float(nxt)) if nxt is not None else None,
                missed=int(rec.get("missed") or 0),
            )
        )
    return out


def warm_now(
    schedules: Sequence[ScheduleSpec], records: dict[str, dict[str, Any]], now: float
) -> bool:
    """Whether a schedule with ``warmSeconds`` ticks within its warm window (pre-warm a pod)."""
    for spec in schedules:
        nxt = (records.get(spec.name) or {}).get("nextTick")
        if (
            spec.warm_seconds > 0
            and not spec.suspend
            and isinstance(nxt, int | float)
            and 0 <= nxt - now <= spec.warm_seconds
        ):
            return True
    return False


_EVENTS = {
    "fired": ("Normal", "ScheduleFired"),
    "replaced": ("Normal", "ScheduleFired"),
    "skipped": ("Normal", "ScheduleSkipped"),
    "missed": ("Warning", "ScheduleMissed"),
}


class Scheduler:
    """The operator's schedule loop over every queue in the registry (one asyncio task)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None
        self._known: dict[tuple[str, str], dict[str, str]] = {}
        self.records: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def start(self) -> None:
        """Start the loop."""
        self._task = asyncio.create_task(self._run(), name="bgq-schedules")

    async def stop(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.tick(time.time())
            except Exception:  # a bug must not stop every schedule
                log.exception("schedule loop failed")
            await asyncio.sleep(LOOP_S - (time.time() % LOOP_S) + 0.01)

    async def tick(self, now: float) -> None:
        """Handle every queue's due ticks once."""
        from bgq_operator.reconcile import flush_status, post_event

        for state in self.ctx.registry.all():
            spec = state.spec
            if spec is None or state.endpoint is None:
                continue
            if not spec.schedules:
                if state.schedules:
                    state.schedules, state.warm = [], False
                continue
            queue = QueueName(state.namespace, state.name)
            client = AsyncClient(
                redis_client=self.ctx.redis.client(state.endpoint), namespace=state.namespace
            )
            known = self._known.setdefault(state.key, {})
            try:
                outcomes, records = await run_schedules(client, queue, spec.schedules, now, known)
            except _REDIS_ERRORS as exc:
                log.info("schedules of %s/%s wait for Redis: %s", *state.key, exc)
                continue
            self.records[state.key] = records
            state.warm = warm_now(spec.schedules, records, now)
            status = status_of(records)
            if status != state.schedules or outcomes:
                state.schedules = status
                async with state.lock:
                    await flush_status(self.ctx, state)
            for out in outcomes:
                if out.outcome not in _EVENTS:
                    continue
                kind, reason = _EVENTS[out.outcome]
                when = f" tick {rfc3339_at(out.tick)}" if out.tick is not None else ""
                text = f"schedule {out.schedule}{when}: {out.outcome}"
                if out.job_id:
                    text += f" (job {out.job_id})"
                if out.detail:
                    text += f"; {out.detail}"
                await post_event(self.ctx, state, kind, reason, text)
