"""Small asyncio helpers whose bounds hold (Python 3.11's ``asyncio.wait_for`` can swallow a
cancellation that races the awaited event: a loop built on it may survive ``cancel()``, which
is how a worker once kept writing heartbeats after its drain until it was SIGKILLed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("bgq.worker")


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True if it is set. Cancellation always
    propagates (``asyncio.timeout`` counts cancellations; ``wait_for`` in 3.11 does not)."""
    if event.is_set():
        return True
    if seconds <= 0:
        return False
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def bounded(what: str, awaitable: Awaitable[T], seconds: float) -> T | None:
    """Await with a hard bound; on timeout or error log ``what`` and return None."""
    if seconds <= 0:
        log.error("no time left to %s", what)
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        return None
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        log.error("gave up trying to %s after %.1f s", what, seconds)
    except Exception as exc:
        log.error("could not %s: %s: %s", what, type(exc).__name__, exc)
    return None


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], seconds: float) -> list[str]:
    """Cancel ``tasks`` and wait for them at most ``seconds`` in total (never an
    unbounded gather); returns the names of tasks that did not finish."""
    tasks = list(tasks)
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        with contextlib.suppress(Exception):
            await asyncio.wait(pending, timeout=max(0.0, seconds))
    stuck = [t.get_name() for t in pending if not t.done()]
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.error("background task %s failed", t.get_name(), exc_info=t.exception())
    if stuck:
        log.error("background tasks did not stop in time", extra={"tasks": stuck})
    return stuck


__all__ = ["bounded", "stop_tasks", "wait_event"]
