"""The operator's shutdown: no reconcile may still be using a connection once it is closed.

A reconcile started from a watch event that is mid-request when the operator stops must be
cancelled before the Kubernetes session closes: a request on a closed aiohttp session raises,
and kopf turns a task's exception at shutdown into exit code 1 (seen in CI on a SIGTERM that
landed during a scale-up).
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from bgq_operator import handlers


class _Conn:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    async def close(self) -> None:
        self.log.append(f"{self.name} closed")


class _Ctx:
    def __init__(self, log: list[str]) -> None:
        self.kube = _Conn(log, "kube")
        self.redis = _Conn(log, "redis")


def test_cleanup_ends_pending_reconciles_before_closing_connections() -> None:
    log: list[str] = []

    async def in_flight_request() -> None:
        try:
            await asyncio.Event().wait()  # a GET that has not answered yet
        except asyncio.CancelledError:
            log.append("reconcile cancelled")
            await asyncio.sleep(0)  # its cleanup still runs on the open connection
            log.append("reconcile ended")
            raise

    memo = handlers.OperatorMemo()

    async def scenario() -> None:
        ctx: Any = _Ctx(log)
        memo.ctx = ctx
        memo.track(in_flight_request())
        (task,) = memo.pending
        await asyncio.sleep(0)
        cleanup: Any = handlers.cleanup  # kopf's decorator types it as an activity callback
        await cleanup(memo=memo)
        assert task.cancelled()

    asyncio.run(scenario())
    assert log == ["reconcile cancelled", "reconcile ended", "redis closed", "kube closed"]
    assert not memo.pending
    assert memo.ctx is None


def test_handlers_refuse_a_memo_that_is_not_ours() -> None:
    """``kopf run`` without the entry point passes a plain kopf.Memo: a clear error, not None."""
    with pytest.raises(kopf.PermanentError, match=r"bgq_operator\.__main__"):
        handlers._memo(kopf.Memo())
