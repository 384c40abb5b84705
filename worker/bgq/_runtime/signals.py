"""SIGTERM/SIGINT honoured from the first instruction of the worker's entry point.

A container's main process is often PID 1, and the kernel drops a signal that PID 1 has no
handler for; with an init (tini) in front, an unhandled SIGTERM would kill the worker by signal.
:func:`capture` installs a handler before any heavy import (it imports only the standard
library). Until :func:`bind` routes the signals to the running event loop, nothing can be
connected, fetched or held, so a stop request then makes the process exit 0 at once (waiting
for the imports to finish first was measured to overrun the grace period on a loaded node);
:func:`bind` also replays requests recorded when early exit is off (tests). A process
started with SIGTERM blocked (an init or launcher may do that) gets the pending signal the
moment the handler is in place.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_pending: list[float] = []
"""Monotonic times of stop requests received before :func:`bind`."""
_state = {"captured": False, "bound": False, "exit_early": True}


_EARLY_EXIT = b"bgq worker: stop requested before start: exiting 0 without fetching\n"


def _record(signum: int, frame: object) -> None:
    if _state["bound"] or not _state["exit_early"]:
        _pending.append(time.monotonic())
        return
    # Not bound to a loop yet: nothing is connected, fetched or held, so the truthful and
    # prompt answer is to leave now (imports can take seconds on a loaded node; waiting for
    # them to finish before acting could overrun the grace period).
    os.write(2, _EARLY_EXIT)
    os._exit(0)


def capture(exit_early: bool = True) -> None:
    """Handle SIGTERM/SIGINT from now on (call first thing in the entry point). Until
    :func:`bind`, a signal makes the process exit 0 at once (``exit_early``) or is recorded."""
    _state["exit_early"] = exit_early
    for sig in SIGNALS:
        signal.signal(sig, _record)
    _state["captured"] = True
    # A launcher may start us with the signals blocked (so that none can arrive before this
    # handler exists): a request pending since then is delivered now, to the handler.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def pending() -> list[float]:
    """Stop requests recorded and not yet handed to a loop (oldest first)."""
    return list(_pending)


def bind(
    loop_add: Callable[[int, Callable[[], None]], None], on_stop: Callable[[], None]
) -> list[float]:
    """Route the signals to ``on_stop`` through ``loop_add`` (``loop.add_signal_handler``), then
    return the requests recorded before (the caller replays them). Order matters: the loop's
    handler is in place before the record is read, so no signal falls between the two."""
    for sig in SIGNALS:
        loop_add(sig, on_stop)
    _state["bound"] = True
    early = list(_pending)
    _pending.clear()
    return early


def release(loop_remove: Callable[[int], object]) -> None:
    """Detach the loop's handlers; keep recording (a late signal while the process exits must
    neither kill it mid-teardown nor be mistaken for a fresh start)."""
    for sig in SIGNALS:
        loop_remove(sig)
    _state["bound"] = False
    _state["exit_early"] = False  # a late signal while the process exits is only recorded
    if _state["captured"]:
        for sig in SIGNALS:
            signal.signal(sig, _record)



__all__ = ["SIGNALS", "bind", "capture", "pending", "release"]
