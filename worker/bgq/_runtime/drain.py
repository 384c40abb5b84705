"""The drain: a small explicit state machine under ONE hard deadline.

SIGTERM (or SIGINT) starts it: stop fetching; hand back fetched-but-unstarted jobs at once;
tell running jobs (``current_job().shutdown_requested``); let them finish until
``BGQ_DRAIN_SECONDS`` after the request; then cancel what is left and hand it back without
consuming a retry; hand back anything still pending for this consumer; exit 0. A second signal
skips to the drain deadline.

Every step, Redis calls included, is bounded by :class:`ShutdownClock`: the whole shutdown ends
by ``drain_seconds + TEARDOWN_SECONDS`` after the request, below the pod's grace period (the
operator sets it to drain + 5 s). With Redis unreachable the worker still exits in time; the
jobs it could not hand back return by lease expiry, and the log names them.

:func:`next_phase` is pure (unit-tested without Redis); :class:`Drainer` performs the phases.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass

from bgq._calls import QueueCalls, StopReason
from bgq._runtime.aio import bounded
from bgq._runtime.executor import Executor, hand_back
from bgq._runtime.fetcher import Fetcher
from bgq._runtime.jobs import JobTable
from bgq._runtime.settler import SettleBuffer
from bgq.metrics import Metrics

log = logging.getLogger("bgq.worker")

TEARDOWN_SECONDS = 3.5
"""Time after the drain budget for cancelling, handing back and closing (grace = drain + 5)."""
CANCEL_GRACE_SECONDS = 2.0
"""At the drain deadline, how long cancelled jobs get to unwind before being handed back."""
FLUSH_RESERVE_SECONDS = 1.0
"""Kept back from the cancel grace for the final settle and hand-back calls."""
HAND_BACK_WAIT_SECONDS = 2.0
"""How long the first hand-back waits for Redis before the drain goes on (it keeps retrying)."""


class Phase(enum.Enum):
    """The drain's steps, in order."""

    STOP_FETCHING = "stop-fetching"
    HAND_BACK = "hand-back"
    WAIT_RUNNING = "wait-running"
    CANCEL_RUNNING = "cancel-running"
    FINAL_FLUSH = "final-flush"
    RELEASE_ORPHANS = "release-orphans"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class ShutdownClock:
    """Deadlines of one shutdown (monotonic seconds)."""

    requested_at: float
    drain_seconds: float
    teardown_seconds: float = TEARDOWN_SECONDS

    @property
    def job_deadline(self) -> float:
        """Running jobs may run until then."""
        return self.requested_at + self.drain_seconds

    @property
    def hard_deadline(self) -> float:
        """Everything, teardown included, ends by then."""
        return self.job_deadline + self.teardown_seconds

    def left(self, now: float) -> float:
        """Seconds until the hard deadline (never negative)."""
        return max(0.0, self.hard_deadline - now)

    def cancel_grace(self, now: float) -> float:
        """How long cancelled jobs may take to unwind, keeping time for the final calls."""
        return max(0.0, min(CANCEL_GRACE_SECONDS, self.left(now) - FLUSH_RESERVE_SECONDS))


@dataclass(frozen=True, slots=True)
class DrainFacts:
    """What the next step depends on."""

    now: float
    running: int
    forced: bool
    """A second signal: skip to the drain deadline."""
    fetched: bool
    """The fetcher ran: something may be pending in Redis for this consumer."""


def next_phase(phase: Phase, facts: DrainFacts, clock: ShutdownClock) -> Phase:
    """The step after ``phase``. Past the hard deadline every remaining step is skipped."""
    if phase is Phase.DONE or facts.now >= clock.hard_deadline:
        return Phase.DONE
    if phase is Phase.STOP_FETCHING:
        return Phase.HAND_BACK if facts.fetched else Phase.DONE
    if phase is Phase.HAND_BACK:
        return Phase.WAIT_RUNNING
    if phase is Phase.WAIT_RUNNING:
        if not facts.running:
            return Phase.FINAL_FLUSH
        if facts.forced or facts.now >= clock.job_deadline:
            return Phase.CANCEL_RUNNING
        return Phase.WAIT_RUNNING
    if phase is Phase.CANCEL_RUNNING:
        return Phase.FINAL_FLUSH
    if phase is Phase.FINAL_FLUSH:
        return Phase.RELEASE_ORPHANS
    return Phase.DONE


class Drainer:
    """Performs the phases with the worker's parts."""

    def __init__(
        self,
        clock: ShutdownClock,
        *,
        table: JobTable,
        fetcher: Fetcher,
        fetcher_task: asyncio.Task[None] | None,
        executor: Executor,
        settler: SettleBuffer,
        calls: QueueCalls,
        metrics: Metrics,
        forced: asyncio.Event,
        finished: asyncio.Event,
    ) -> None:
        self.clock = clock
        self.table = table
        self.fetcher = fetcher
        self.fetcher_task = fetcher_task
        self.executor = executor
        self.settler = settler
        self.calls = calls
        self.metrics = metrics
        self.forced = forced
        self.finished = finished
        self.phases: list[Phase] = []
        """The phases run, in order (logged, and read by tests)."""

    def facts(self) -> DrainFacts:
        return DrainFacts(
            time.monotonic(),
            self.table.running,
            self.forced.is_set(),
            self.fetcher_task is not None,
        )

    async def run(self) -> None:
        """Run the drain to its end (or the hard deadline)."""
        phase = Phase.STOP_FETCHING
        while phase is not Phase.DONE:
            self.phases.append(phase)
            await self._perform(phase)
            nxt = next_phase(phase, self.facts(), self.clock)
            if nxt is Phase.DONE and phase is not Phase.RELEASE_ORPHANS and self.fetcher_task:
                log.error(
                    "shutdown deadline reached: skipping the rest of the drain",
                    extra={"phase": phase.value, "held": sorted(self.table.held)},
                )
            phase = nxt
        self._report()

    async def _perform(self, phase: Phase) -> None:
        clock = self.clock
        if phase is Phase.STOP_FETCHING:
            self.executor.accepting = False
            await self.fetcher.stop(self.fetcher_task, min(2.0, clock.left(time.monotonic())))
        elif phase is Phase.HAND_BACK:
            unstarted = self.table.take_unstarted()
            hand_back(self.table, self.settler, unstarted)
            self.metrics.drain["released_unstarted"] += len(unstarted)
            if unstarted:
                log.info("handing back unstarted jobs", extra={"count": len(unstarted)})
            wait = min(HAND_BACK_WAIT_SECONDS, clock.left(time.monotonic()))
            await self.settler.settled_within(wait)
            await self._release_orphans(final=False, seconds=min(0.5, self._left()))
        elif phase is Phase.WAIT_RUNNING:
            self.finished.clear()
            left = clock.job_deadline - time.monotonic()
            if self.table.running and not self.forced.is_set() and left > 0:
                forced = asyncio.ensure_future(self.forced.wait())
                finished = asyncio.ensure_future(self.finished.wait())
                try:
                    await asyncio.wait(
                        {forced, finished}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    forced.cancel()
                    finished.cancel()
        elif phase is Phase.CANCEL_RUNNING:
            runners = [h.runner for h in self.table.held.values() if h.runner is not None]
            log.warning(
                "drain deadline: handing back unfinished jobs",
                extra={"count": len(runners), "jobs": sorted(self.table.held)},
            )
            for h in list(self.table.held.values()):
                if h.stop_reason is None:
                    h.stop_reason = StopReason.DRAIN
                self.executor.stop(h)
            grace = clock.cancel_grace(time.monotonic())
            pending = [r for r in runners if not r.done()]
            if pending and grace > 0:
                await asyncio.wait(pending, timeout=grace)
        elif phase is Phase.FINAL_FLUSH:
            if not await self.settler.settled_within(max(0.0, self._left() - 0.5)):
                log.error(
                    "could not settle these jobs before exit; they return by lease expiry",
                    extra={"jobs": self.settler.pending_ids()},
                )
        elif phase is Phase.RELEASE_ORPHANS:
            # last: hand back whatever is still pending for this consumer, including a job whose
            # code ignored cancellation (its late completion is then rejected by the fencing)
            await self._release_orphans(final=True, seconds=self._left())

    def _left(self) -> float:
        return self.clock.left(time.monotonic())

    async def _release_orphans(self, *, final: bool, seconds: float) -> None:
        keep = [] if final else [h.delivery for h in self.table.held.values()]
        n = await bounded(
            "hand back entries pending for this worker",
            self.calls.release_orphans(final=final, keep=keep),
            seconds,
        )
        if n:
            self.metrics.drain["released_deadline" if final else "released_unstarted"] += n
            log.info("handed back entries delivered during shutdown", extra={"count": n})

    def _report(self) -> None:
        stuck = sorted(self.table.held)
        if stuck:
            log.error(
                "exiting while still holding jobs; they return by lease expiry",
                extra={"jobs": stuck},
            )


__all__ = [
    "CANCEL_GRACE_SECONDS",
    "TEARDOWN_SECONDS",
    "DrainFacts",
    "Drainer",
    "Phase",
    "ShutdownClock",
    "next_phase",
]
