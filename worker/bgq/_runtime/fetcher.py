"""The fetcher: batched fetches sized to free slots, blocking reads only when idle.

It calls ``fetch.lua`` for as many jobs as there is room for (running slots plus a prefetch
buffer), carrying buffered settle records in the same round trip, and only when that returns
nothing blocks in ``XREADGROUP ... BLOCK`` on a dedicated connection (which the drain can
``CLIENT UNBLOCK`` at once). The sizing rules are pure functions, unit-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from bgq._calls import SETTLE_CHUNK, Delivery, FetchReply, QueueCalls
from bgq._runtime.settler import SettleBuffer
from bgq.connection import BlockingConnection, is_redirect
from bgq.metrics import Metrics
from bgq.protocol import GROUP

log = logging.getLogger("bgq.worker")
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
MAX_BLOCK_MS = 1000
"""Longest idle block: bounds how late an idle worker sees a delayed job become due."""
BUSY_BLOCK_MS = 100
"""Block while jobs run here: a retry they schedule is promoted within this time."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def fetch_room(held: int, concurrency: int, limit: int) -> int:
    """How many jobs to fetch now (0: wait until jobs finish).

    ``limit`` is concurrency + prefetch. With every slot busy or spoken for, wait until half the
    room is free, so fetches come in batches rather than one job per finished job.
    """
    room = limit - held
    if room <= 0 or (held >= concurrency and room < limit // 2):
        return 0
    return room


def block_ms(running: int, next_due_ms: int, local_due_ms: int, now_ms: int) -> int:
    """How long a blocking read may wait: at most MAX_BLOCK_MS idle (expired leases of dead
    workers are reclaimed on that cadence), BUSY_BLOCK_MS while jobs run here (a retry they
    schedule starts on time), and never past the next due delayed job."""
    block = BUSY_BLOCK_MS if running else MAX_BLOCK_MS
    for due in (next_due_ms, local_due_ms):
        if due > 0:
            block = max(1, min(block, due - now_ms))
    return block


class Fetcher:
    """Feeds the job table from Redis until :meth:`stop`."""

    def __init__(
        self,
        calls: QueueCalls,
        blocker: BlockingConnection,
        settler: SettleBuffer,
        metrics: Metrics,
        *,
        concurrency: int,
        limit: int,
        held: Callable[[], int],
        running: Callable[[], int],
        on_fetched: Callable[[list[Delivery]], None],
        checkpoints: dict[str, str] | None = None,
    ) -> None:
        self.calls = calls
        self.blocker = blocker
        self.settler = settler
        self.metrics = metrics
        self.concurrency = concurrency
        self.limit = limit
        self._held = held
        self._running = running
        self._on_fetched = on_fetched
        self.checkpoints = checkpoints
        """Where saved checkpoints of fetched jobs go (the job table's), if anywhere."""
        self.space = asyncio.Event()
        """Set when held jobs finish (room to fetch may have opened)."""
        self.stopping = False
        self.local_due = 0
        """Earliest due time of a retry this worker scheduled (its settle may be queued)."""
        self._adopt: list[tuple[int, str]] = []
        self._blocker_id: int | None = None
        """CLIENT ID of the blocking connection, so a drain can CLIENT UNBLOCK it at once."""

    def note_retry(self, due_ms: int) -> None:
        """A job here scheduled a retry at ``due_ms``: block no longer than that."""
        self.local_due = min(self.local_due or due_ms, due_ms)

    async def run(self) -> None:
        """The fetcher task: never dies on errors (logs, backs off, goes on)."""
        delay = 0.1
        while not self.stopping:
            room = fetch_room(self._held(), self.concurrency, self.limit)
            if room == 0:
                self.space.clear()
                await self.space.wait()
                continue
            try:
                reply = await self._fetch(room)
                delay = 0.1
                if not reply.deliveries and not self.stopping:
                    await self._block(room, reply.next_due_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.counts["redis_errors"] += 1
                log.warning(
                    "fetch failed, retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                    exc_info=not isinstance(exc, (*REDIS_ERRORS, redis.ResponseError)),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
                    with contextlib.suppress(*REDIS_ERRORS, redis.ResponseError):
                        await self.calls.ensure_groups()

    async def _fetch(self, room: int) -> FetchReply:
        adopt, self._adopt = self._adopt, []
        now = _now_ms()
        settler = self.settler
        if not settler.buf:
            settled = settler.idle.is_set()
            reply = await self.calls.fetch(room, now, adopt)
        else:
            # completions waiting: send them in the same round trip as the fetch
            settled = not settler.inflight and len(settler.buf) <= SETTLE_CHUNK
            chunk = settler.take()
            try:
                stale, fetched = await self.calls.settle_and_fetch(now, chunk, room, adopt)
            except BaseException:
                settler.done(chunk, None)
                self._adopt[:0] = adopt
                raise
            if isinstance(stale, BaseException):
                settler.done(chunk, None)
                settler.wake.set()
            else:
                settler.done(chunk, stale)
            if isinstance(fetched, BaseException):
                self._adopt[:0] = adopt
                raise fetched
            reply = fetched
        if self.local_due and settled and self.local_due <= now:
            self.local_due = 0  # this fetch promoted it
        self.metrics.counts["reclaimed"] += reply.reclaimed
        if reply.poison:
            self.metrics.counts["poison_pills"] += reply.poison
        if reply.checkpoints and self.checkpoints is not None:
            self.checkpoints.update(reply.checkpoints)
        if reply.deliveries:
            self._on_fetched(reply.deliveries)
        return reply

    async def _block(self, room: int, next_due_ms: int) -> None:
        """Nothing to fetch: block on the streams until an entry arrives or a delayed job is
        due; entries delivered are adopted by the next fetch (which starts their leases)."""
        block = block_ms(self._running(), next_due_ms, self.local_due, _now_ms())
        keys = self.calls.keys
        try:
            # one dedicated connection on the node that holds the queue's slot (cluster-safe)
            conn = await self.blocker.get()
            self._blocker_id = self.blocker.client_id
            reply: Any = await conn.xreadgroup(
                GROUP, self.calls.consumer, dict.fromkeys(keys.ready, ">"), count=room, block=block
            )
        except BaseException as exc:
            self._blocker_id = None  # the connection may be replaced
            if is_redirect(exc):  # resharding (MOVED/ASK) or failover: find the slot's owner
                with contextlib.suppress(Exception):
                    await self.blocker.reset()
            raise
        for stream, entries in reply or []:
            band = keys.ready.index(stream)
            for entry_id, _ in entries:
                self._adopt.append((band, entry_id))

    async def stop(self, task: asyncio.Task[None] | None, seconds: float) -> None:
        """Stop fetching within ``seconds`` (at most about one second): the current call may
        finish, a blocking read is unblocked (redis-py does not abort a blocked command on
        cancellation), then the task is cancelled. Entries a read delivered meanwhile stay
        pending for this consumer: the drain hands them back."""
        self.stopping = True
        self.space.set()
        if task is None or task.done():
            return
        deadline = time.monotonic() + min(seconds, 1.0)

        def left(cap: float) -> float:
            return max(0.0, min(cap, deadline - time.monotonic()))

        await asyncio.wait([task], timeout=left(0.01))
        if not task.done() and self._blocker_id is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(max(0.01, left(0.25))):
                    await self.blocker.unblock()  # on the node holding the connection
        if not task.done():
            await asyncio.wait([task], timeout=left(0.5))
        if not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=max(0.05, left(0.25)))



__all__ = ["BUSY_BLOCK_MS", "MAX_BLOCK_MS", "Fetcher", "block_ms", "fetch_room"]
