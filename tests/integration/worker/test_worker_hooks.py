"""Hooks around real jobs (in-process worker, real redis-server): what each hook sees, in which
order, and that hooks which raise everywhere change nothing about any job."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import bgq
from bgq.hooks import HOOKS, Attempt, EnqueueJob, Hook
from conftest import QUEUE, StartWorker


class Recorder(Hook):
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail

    def _rec(self, *call: Any) -> None:
        self.calls.append(call)
        if self.fail:
            raise RuntimeError(f"hook broke in {call[0]}")

    def before_enqueue(self, job: EnqueueJob) -> None:
        self._rec("before_enqueue", job.task)

    def before_run(self, attempt: Attempt) -> None:
        assert bgq.current_job() is attempt.job  # inside the job's context
        self._rec("before_run", attempt.job.task, attempt.job.attempt)

    def on_failure(self, attempt: Attempt, exc: BaseException, retry_in: float | None) -> None:
        self._rec("on_failure", attempt.job.attempt, type(exc).__name__, retry_in is not None)

    def on_dead(self, attempt: Attempt, reason: str, error: str) -> None:
        self._rec("on_dead", attempt.job.attempt, reason)

    def after_run(self, attempt: Attempt, outcome: str) -> None:
        self._rec("after_run", attempt.job.attempt, outcome)


@pytest.fixture
def hooks() -> Iterator[tuple[Recorder, Recorder]]:
    broken, seen = Recorder(fail=True), Recorder()
    HOOKS.register(broken)  # first: its failures must not stop the second
    HOOKS.register(seen)
    yield broken, seen
    HOOKS.unregister(broken)
    HOOKS.unregister(seen)


async def test_hooks_see_every_attempt_and_a_failing_hook_changes_nothing(
    start_worker: StartWorker, redis_url: str, hooks: tuple[Recorder, Recorder]
) -> None:
    broken, seen = hooks
    await start_worker()
    async with bgq.AsyncClient(redis_url) as client:
        ok = await client.enqueue(QUEUE, "echo", 7)
        assert await client.wait(QUEUE, ok.id, timeout=10) == 7
        retried = await client.enqueue(QUEUE, "flaky", "hk", 1)
        assert await client.wait(QUEUE, retried.id, timeout=10) == 2
        dead = await client.enqueue(QUEUE, "picky")
        with pytest.raises(bgq.JobFailed):
            await client.wait(QUEUE, dead.id, timeout=10)
        assert (await client.get(QUEUE, dead.id)).reason == "not-retryable"
    assert seen.calls == [
        ("before_enqueue", "echo"),
        ("before_run", "echo", 1),
        ("after_run", 1, "succeeded"),
        ("before_enqueue", "flaky"),
        ("before_run", "flaky", 1),
        ("on_failure", 1, "RuntimeError", True),
        ("after_run", 1, "retry"),
        ("before_run", "flaky", 2),
        ("after_run", 2, "succeeded"),
        ("before_enqueue", "picky"),
        ("before_run", "picky", 1),
        ("on_failure", 1, "PermanentError", False),
        ("on_dead", 1, "not-retryable"),
        ("after_run", 1, "dead"),
    ]
    assert broken.calls == seen.calls  # called every time, raised every time
    assert HOOKS.errors >= len(broken.calls)


async def _started(seen: Recorder, n: int) -> None:
    """Wait (bounded) until the n-th "sleepy" attempt started."""
    for _ in range(500):
        if len([c for c in seen.calls if c[:2] == ("before_run", "sleepy")]) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"sleepy attempt {n} never started")


async def test_cancel_timeout_and_drain_hand_back_reach_after_run(
    start_worker: StartWorker, redis_url: str, hooks: tuple[Recorder, Recorder]
) -> None:
    _, seen = hooks
    w = await start_worker(drain_seconds=0.5)
    async with bgq.AsyncClient(redis_url) as client:
        timed_out = await client.enqueue(QUEUE, "slow_async", "to")  # timeout 0.3 s, 1 retry
        with pytest.raises(bgq.JobFailed):
            await client.wait(QUEUE, timed_out.id, timeout=15)
        cancelled = await client.enqueue(QUEUE, "sleepy", 30, "cx")
        await _started(seen, 1)
        assert await client.cancel(QUEUE, cancelled.id) == "cancelling"
        with pytest.raises(bgq.JobCancelled):
            await client.wait(QUEUE, cancelled.id, timeout=15)
        running = await client.enqueue(QUEUE, "sleepy", 30, "hb")
        await _started(seen, 2)
        assert await w.stop(15) == 0
        assert (await client.get(QUEUE, running.id)).state is bgq.JobState.QUEUED
    outcomes = [c for c in seen.calls if c[0] in ("on_failure", "on_dead", "after_run")]
    assert outcomes == [
        ("on_failure", 1, "JobTimeout", True),
        ("after_run", 1, "retry"),
        ("on_failure", 2, "JobTimeout", False),
        ("on_dead", 2, "retries-exhausted"),
        ("after_run", 2, "dead"),
        ("after_run", 1, "cancelled"),
        ("after_run", 1, "handed_back"),
    ]
