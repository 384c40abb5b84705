"""The jobs a worker holds: fetched and not yet settled, started or waiting for a slot."""

from __future__ import annotations

import asyncio
import collections
import contextlib

from bgq._calls import Delivery, StopReason
from bgq.context import JobContext


class Held:
    """One job this worker holds. ``stop_reason`` is set when the worker stopped it."""

    __slots__ = ("ctx", "delivery", "id", "runner", "started_ms", "stop_reason", "timeout")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.id = delivery.job_id
        self.started_ms = 0
        self.runner: asyncio.Task[None] | None = None
        self.ctx: JobContext | None = None
        self.stop_reason: StopReason | None = None
        self.timeout = 0.0

    def __repr__(self) -> str:
        return f"<Held {self.id} token {self.delivery.token}>"


class JobTable:
    """Held jobs by id, plus the FIFO of those not started yet (prefetched).

    The runtime's parts share this one table: the fetcher adds, the executor starts and
    finishes, the keeper renews and marks lost, the drain hands back.
    """

    __slots__ = ("backlog", "checkpoints", "held", "running")

    def __init__(self) -> None:
        self.held: dict[str, Held] = {}
        self.backlog: collections.deque[Held] = collections.deque()
        self.running = 0
        self.checkpoints: dict[str, str] = {}
        """Saved checkpoints (JSON text) of held jobs that have one, from the fetch reply:
        the executor hands them to the run as ``current_job().last_checkpoint``."""

    def __len__(self) -> int:
        return len(self.held)

    def admit(self, deliveries: list[Delivery]) -> list[Held]:
        """Hold newly fetched jobs. A job already held under an older token (this worker
        stalled and reclaimed its own job) is replaced: newest token wins; the old run is
        returned so the caller stops it as lost."""
        superseded: list[Held] = []
        held, backlog = self.held, self.backlog
        for d in deliveries:
            h = Held(d)
            old = held.get(h.id)
            if old is not None:
                old.stop_reason = StopReason.LOST
                superseded.append(old)
            held[h.id] = h
            backlog.append(h)
        return superseded

    def release(self, h: Held) -> bool:
        """Stop holding ``h`` (settled or lost); False if a newer delivery replaced it."""
        if self.held.get(h.id) is h:
            del self.held[h.id]
            if self.checkpoints:
                self.checkpoints.pop(h.id, None)
            return True
        return False

    def is_current(self, h: Held) -> bool:
        """True while ``h`` is the delivery this worker holds for its job."""
        return self.held.get(h.id) is h

    def take_unstarted(self) -> list[Held]:
        """Empty the backlog; the jobs in it that were not stopped already."""
        unstarted = [h for h in self.backlog if h.stop_reason is None]
        self.backlog.clear()
        return unstarted

    def drop_from_backlog(self, h: Held) -> None:
        """Remove a not-yet-started job from the backlog (cancelled or lost while waiting)."""
        with contextlib.suppress(ValueError):
            self.backlog.remove(h)

    def oldest_started_ms(self) -> int:
        """Start time of the longest-running held job (0 when none runs)."""
        started = [h.started_ms for h in self.held.values() if h.started_ms]
        return min(started) if started else 0


__all__ = ["Held", "JobTable"]
