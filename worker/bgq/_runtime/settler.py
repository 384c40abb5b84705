"""The settle buffer: finished jobs' records, sent in coalesced, fenced batches.

A finished job appends one record; one flusher sends everything that accumulated in ONE
``settle.lua`` call (natural batching: the busier, the bigger the batch), or the fetcher takes
the records along with its next fetch (one round trip for both). While Redis is down the
records stay here and are retried: the jobs are held by their leases meanwhile, nothing is
lost; re-sending a record that did apply is harmless, the fencing rejects it as stale.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis

from bgq._calls import SETTLE_CHUNK, Delivery, QueueCalls, SettleRecord
from bgq._runtime.aio import wait_event
from bgq.metrics import Metrics

log = logging.getLogger("bgq.worker")
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)

Entry = tuple[SettleRecord, Delivery]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SettleBuffer:
    """Records waiting for Redis, and the flusher that sends them."""

    def __init__(self, calls: QueueCalls, metrics: Metrics) -> None:
        self.calls = calls
        self.metrics = metrics
        self.buf: list[Entry] = []
        self.inflight = 0
        self._flying: list[list[Entry]] = []
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    def add(self, record: SettleRecord, delivery: Delivery) -> None:
        """Queue one job's record (the job is no longer held by the worker)."""
        self.buf.append((record, delivery))
        self.wake.set()
        self.idle.clear()

    @property
    def empty(self) -> bool:
        """True when nothing is buffered or in flight."""
        return not self.buf and not self.inflight

    def take(self) -> list[Entry]:
        """Move up to SETTLE_CHUNK records from the buffer into flight."""
        chunk = self.buf[:SETTLE_CHUNK]
        del self.buf[:SETTLE_CHUNK]
        self.inflight += 1
        self._flying.append(chunk)
        return chunk

    def done(self, chunk: list[Entry], stale: list[int] | None) -> None:
        """Account for a settle call: ``stale`` None means it failed (records go back)."""
        self.inflight -= 1
        for i, flying in enumerate(self._flying):
            if flying is chunk:
                del self._flying[i]
                break
        if stale is None:
            self.buf[:0] = chunk
        elif stale:
            self.metrics.counts["stale_acks"] += len(stale)
            log.warning("completions rejected: jobs were reclaimed", extra={"count": len(stale)})
        if not self.buf and not self.inflight:
            self.idle.set()

    def pending_ids(self) -> list[str]:
        """Job ids whose records have not reached Redis yet (buffered or in flight)."""
        return [d.job_id for chunk in (*self._flying, self.buf) for _, d in chunk]

    async def run(self) -> None:
        """The flusher task (runs until cancelled)."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            # one loop turn first: a fetcher woken by the same completions takes the records
            # along with its fetch (one round trip for both); otherwise settle on this
            # connection, overlapping with the fetch in flight.
            await asyncio.sleep(0)
            await self.flush()

    async def flush(self) -> None:
        """Send every buffered record, retrying with backoff while Redis fails."""
        delay = 0.1
        while self.buf:
            chunk = self.take()
            try:
                stale = await self.calls.settle(_now_ms(), chunk)
            except Exception as exc:  # keep the records and retry: they are the completions
                self.done(chunk, None)
                self.metrics.counts["redis_errors"] += 1
                log.warning(
                    "settle failed, retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                    exc_info=not isinstance(exc, REDIS_ERRORS),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.done(chunk, stale)

    async def settled_within(self, seconds: float) -> bool:
        """Wake the flusher and wait (bounded) until every record reached Redis."""
        deadline = time.monotonic() + seconds
        while not self.empty:
            self.wake.set()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await wait_event(self.idle, min(left, 0.25))
        return True


__all__ = ["SettleBuffer"]
