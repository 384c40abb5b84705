"""``ScaledUp`` / ``ScaledDown`` events, at most one per queue every ``SCALE_EVENT_INTERVAL_S``.

The autoscaler can change a busy queue's replicas every few seconds (a step per
``jobsPerPod`` of new backlog), and each change was an event: with 50 busy queues among 1,000
that was ~7 event POSTs a second, writes a scale-up from zero then waited behind at the API
server, and a ``kubectl describe`` that scrolls. Kubernetes' own event recorder folds repeated
events for the same reason; this does the same for scale changes:

* the first change after a quiet ``SCALE_EVENT_INTERVAL_S`` is posted at once (a queue woken
  from rest, a scale-down after a burst: the news people look for);
* further changes in the same direction within the interval are folded into one event posted
  when the interval ends: ``replicas 3 -> 7: <the last decision's reason> (4 changes)``;
* a change of direction posts the folded one first, then itself at once, so events keep their
  order and a reversal is never held back.

Every decision is still in ``status.scaling``, the decision metrics and the traces; only the
events are folded. :meth:`ScaleEvents.close` posts what is still folded (operator shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bgq_operator.state import QueueState

SCALE_EVENT_INTERVAL_S = 10.0
"""The shortest time between two scale events of one queue (changes in between are folded)."""

Post = Callable[[QueueState, str, str], Awaitable[None]]
"""Posts one event: ``(queue, reason, message)``."""


@dataclass
class _Folded:
    state: QueueState
    start: int
    """Replicas before the first folded change."""
    target: int
    why: str
    changes: int
    up: bool


class ScaleEvents:
    """Scale events of every queue, folded per queue (see the module docstring)."""

    def __init__(self, post: Post, interval: float = SCALE_EVENT_INTERVAL_S) -> None:
        self._post = post
        self.interval = interval
        self._last: dict[str, tuple[float, bool]] = {}
        """Per queue, when its last scale event was posted (monotonic) and its direction."""
        self._folded: dict[str, _Folded] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._pruned = time.monotonic()

    async def scaled(self, state: QueueState, current: int, target: int, why: str) -> None:
        """Replicas of ``state`` went from ``current`` to ``target`` for reason ``why``."""
        name, up, now = state.queue_name, target > current, time.monotonic()
        folded = self._folded.get(name)
        if folded is not None:
            if folded.up == up:
                folded.target, folded.why, folded.changes = target, why, folded.changes + 1
                return
            await self._flush(name)  # a reversal: what was folded goes first, then this one
        else:
            last = self._last.get(name)
            if last is not None and now - last[0] < self.interval and last[1] == up:
                self._folded[name] = _Folded(state, current, target, why, 1, up)
                self._timers[name] = asyncio.create_task(
                    self._flush_at(name, last[0] + self.interval), name=f"bgq-events {name}"
                )
                return
        self._prune(now)
        self._last[name] = (now, up)
        await self._post(state, _reason(up), f"replicas {current} -> {target}: {why}")

    async def close(self) -> None:
        """Post every folded event now and stop the timers."""
        for name in list(self._folded):
            await self._flush(name)

    async def _flush_at(self, name: str, when: float) -> None:
        await asyncio.sleep(max(0.0, when - time.monotonic()))
        self._timers.pop(name, None)  # this task is the one running: not cancelled below
        await self._flush(name)

    async def _flush(self, name: str) -> None:
        folded = self._folded.pop(name, None)
        timer = self._timers.pop(name, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        if folded is None:
            return
        self._last[name] = (time.monotonic(), folded.up)
        more = f" ({folded.changes} changes)" if folded.changes > 1 else ""
        await self._post(
            folded.state, _reason(folded.up),
            f"replicas {folded.start} -> {folded.target}: {folded.why}{more}",
        )  # fmt: skip

    def _prune(self, now: float) -> None:
        """Forget queues quiet for longer than the interval (deleted ones among them), at most
        once per interval."""
        if now - self._pruned < self.interval:
            return
        self._pruned = now
        self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}


def _reason(up: bool) -> str:
    return "ScaledUp" if up else "ScaledDown"
