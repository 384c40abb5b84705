"""The lease keeper: renews every held lease each lease/3 in ONE ``renew.lua`` call and writes
the heartbeat record (every ``BGQ_HEARTBEAT_SECONDS`` and at once on idle<->busy changes).

It runs on the event loop, independent of job code (CPU-bound work runs in other processes and
threads), learns about lost leases and cancel requests from the renewal's reply, and tells the
executor to stop those jobs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from bgq._calls import RENEW_CHUNK, QueueCalls, RenewStatus, StopReason
from bgq._runtime.aio import wait_event
from bgq._runtime.jobs import Held, JobTable
from bgq.metrics import Metrics
from bgq.protocol import Keys

log = logging.getLogger("bgq.worker")
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
HB_MIN_SPACING = 0.1
"""Least time between two heartbeat writes triggered by idle<->busy transitions."""
PROGRESS_EVERY = 1.0
"""Pending job progress or checkpoints make the renewal come early, at most this often."""
FLUSH_TIMEOUT = 1.0
"""Bound of the one-job progress flush before a hand-back or retry."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class LeaseKeeper:
    """Renewal and heartbeat for one worker."""

    def __init__(
        self,
        calls: QueueCalls,
        table: JobTable,
        metrics: Metrics,
        *,
        lease_seconds: float,
        heartbeat_seconds: float,
        identity: dict[str, Any],
        stop_job: Callable[[Held], None],
        state: Callable[[], str],
    ) -> None:
        self.calls = calls
        self.keys: Keys = calls.keys
        self.table = table
        self.metrics = metrics
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.identity = identity
        """Constant heartbeat fields: pod, pid, concurrency, version."""
        self._stop_job = stop_job
        self._state = state
        self.wake = asyncio.Event()
        """Set on an idle<->busy<->draining transition: write the heartbeat soon."""
        self.wrote_heartbeat = False

    def heartbeat_fields(self) -> dict[str, Any]:
        """The heartbeat record (docs/design.md)."""
        return {
            **self.identity,
            "state": self._state(),
            "in_flight": len(self.table),
            "oldest_started_ms": self.table.oldest_started_ms(),
            "heartbeat_ms": _now_ms(),
        }

    async def run(self) -> None:
        """The keeper task (runs until cancelled; Redis errors are logged and retried)."""
        renew_every = self.lease_seconds / 3
        next_renew = time.monotonic() + renew_every
        next_hb = 0.0
        last_hb = -1.0
        last_renew = time.monotonic()
        while True:
            now = time.monotonic()
            try:
                # transitions are written at once, but at most every HB_MIN_SPACING seconds
                if now >= next_hb or (self.wake.is_set() and now - last_hb >= HB_MIN_SPACING):
                    self.wake.clear()
                    await self.write_heartbeat()
                    last_hb = now
                    next_hb = now + self.heartbeat_seconds
                if now >= next_renew or (
                    now - last_renew >= PROGRESS_EVERY and self._progress_pending()
                ):
                    await self.renew()
                    next_renew = now + renew_every
                    last_renew = now
            except Exception as exc:
                self.metrics.counts["redis_errors"] += 1
                log.warning(
                    "heartbeat/renewal failed, retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                    exc_info=not isinstance(exc, REDIS_ERRORS),
                )
                next_hb = now + 0.5
            wake_at = min(next_hb, next_renew)
            if self._progress_pending():  # come back for it (the renewal carries it)
                wake_at = min(wake_at, last_renew + PROGRESS_EVERY)
            timeout = max(0.01, wake_at - time.monotonic())
            if self.wake.is_set():  # a transition waits for the spacing
                await asyncio.sleep(min(timeout, max(0.01, last_hb + HB_MIN_SPACING - now)))
                continue
            await wait_event(self.wake, timeout)

    def _progress_pending(self) -> bool:
        return any(h.ctx is not None and h.ctx.has_updates for h in self.table.held.values())

    async def renew(self) -> None:
        """Renew every held lease; stop jobs whose lease was lost or that were cancelled.
        Pending progress and checkpoints of the held jobs travel in the same calls."""
        held = list(self.table.held.values())
        for i in range(0, len(held), RENEW_CHUNK):
            part = held[i : i + RENEW_CHUNK]
            updates = _take_updates(part)
            try:
                statuses = await self.calls.renew(
                    [h.delivery for h in part], [u for _, u in updates]
                )
            except BaseException:
                _restore_updates(updates)
                raise
            for h, status in zip(part, statuses, strict=True):
                if status is RenewStatus.RENEWED or not self.table.is_current(h):
                    continue  # renewed, or settled while the renewal was in flight
                if status is RenewStatus.CANCEL_REQUESTED:
                    if h.stop_reason is None:
                        h.stop_reason = StopReason.CANCEL
                        log.info("cancel requested", extra={"job_id": h.id})
                        self._stop_job(h)
                else:
                    self.metrics.counts["leases_lost"] += 1
                    log.warning("lease lost: job was reclaimed elsewhere", extra={"job_id": h.id})
                    h.stop_reason = StopReason.LOST
                    self.table.release(h)
                    self._stop_job(h)
            self.metrics.counts["lease_renewals"] += len(part)

    async def flush_progress(self, h: Held) -> None:
        """Store ``h``'s pending progress/checkpoint now (renewing its lease in the same call):
        the executor calls this before a hand-back or retry settles the job, so the next
        attempt finds the checkpoint. Bounded; a failure is logged, the job goes on."""
        updates = _take_updates([h])
        if not updates:
            return
        try:
            await asyncio.wait_for(
                self.calls.renew([h.delivery], [u for _, u in updates]), FLUSH_TIMEOUT
            )
        except Exception as exc:
            self.metrics.counts["redis_errors"] += 1
            log.warning(
                "could not store the job's progress before settling it",
                extra={"job_id": h.id, "error": f"{type(exc).__name__}: {exc}"},
            )

    async def write_heartbeat(self) -> None:
        """Write the heartbeat hash (TTL 3 intervals) and the queue's worker index."""
        fields: dict[Any, Any] = self.heartbeat_fields()
        consumer = self.calls.consumer
        key = self.keys.worker(consumer)
        ttl_ms = int(self.heartbeat_seconds * 3000)
        pipe = self.calls.client.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, ttl_ms)
        pipe.zadd(self.keys.workers, {consumer: fields["heartbeat_ms"]})
        pipe.zremrangebyscore(self.keys.workers, "-inf", fields["heartbeat_ms"] - 10 * ttl_ms)
        await pipe.execute()
        self.wrote_heartbeat = True

    async def remove_heartbeat(self) -> None:
        """Delete this worker's heartbeat (it stops counting as a worker at once)."""
        consumer = self.calls.consumer
        pipe = self.calls.client.pipeline(transaction=False)
        pipe.delete(self.keys.worker(consumer))
        pipe.zrem(self.keys.workers, consumer)
        await pipe.execute()


def _take_updates(part: list[Held]) -> list[tuple[Held, tuple[str, int, str, str]]]:
    """Pending (progress, checkpoint) of ``part``'s running jobs, taken out of their contexts."""
    out = []
    for h in part:
        ctx = h.ctx
        if ctx is not None and ctx.has_updates:
            progress, checkpoint = ctx.take_updates()
            out.append((h, (h.id, h.delivery.token, progress, checkpoint)))
    return out


def _restore_updates(updates: list[tuple[Held, tuple[str, int, str, str]]]) -> None:
    """Give back updates whose renewal failed (newer ones, if any, win)."""
    for h, (_, _, progress, checkpoint) in updates:
        if h.ctx is not None:
            h.ctx.restore_updates((progress, checkpoint))


def identity(pod: str, concurrency: int, version: str) -> dict[str, Any]:
    """The constant part of the heartbeat record."""
    return {"pod": pod, "pid": os.getpid(), "concurrency": concurrency, "version": version}


__all__ = ["HB_MIN_SPACING", "LeaseKeeper", "identity"]
