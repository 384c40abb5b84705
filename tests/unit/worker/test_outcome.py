"""Table tests of the pure run-outcome decision (no Redis)."""

from __future__ import annotations

import random

import pytest

from bgq._calls import CANCELLED, RELEASE, Dead, Ok, RetryAt, StopReason
from bgq._runtime.outcome import (
    OK_NULL,
    RETURNED_NONE,
    JobFacts,
    Raised,
    RetryPolicy,
    Returned,
    RunResult,
    Stopped,
    decide_outcome,
)
from bgq.errors import JobTimeout, Retry

NOW = 1_700_000_000_000
POLICY = RetryPolicy(backoff_base_seconds=1.0, backoff_max_seconds=60.0)


class FlakyError(Exception):
    pass


def facts(attempt: int = 1, max_retries: int = 3, **kw: object) -> JobFacts:
    return JobFacts(
        task=str(kw.get("task", "t")),
        attempt=attempt,
        max_retries=max_retries,
        timeout=float(kw.get("timeout", 30.0)),  # type: ignore[arg-type]
        retry_on=tuple(kw.get("retry_on", ())),  # type: ignore[arg-type]
        interruptible=bool(kw.get("interruptible", True)),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "null"), (49, "49"), ({"a": [1, "x"]}, '{"a":[1,"x"]}'), ("s", '"s"')],
)
def test_returned_values_become_ok_with_compact_json(value: object, expected: str) -> None:
    assert decide_outcome(facts(), POLICY, Returned(value), NOW) == Ok(expected)


def test_the_shared_none_result_is_the_same_ok_as_any_none() -> None:
    """The executor's fast path (RETURNED_NONE -> OK_NULL) is exactly decide_outcome's answer."""
    assert decide_outcome(facts(), POLICY, RETURNED_NONE, NOW) is OK_NULL
    assert OK_NULL == decide_outcome(facts(), POLICY, Returned(None), NOW) == Ok("null")


@pytest.mark.parametrize("value", [object(), float("nan"), {1, 2}])
def test_a_result_that_cannot_be_stored_is_dead_not_lost(value: object) -> None:
    rec = decide_outcome(facts(task="mk"), POLICY, Returned(value), NOW)
    assert isinstance(rec, Dead) and rec.reason == "result-not-serialisable"
    assert "'mk'" in rec.error


def test_not_retryable_error_is_dead_at_once_with_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        rec = decide_outcome(facts(attempt=1), POLICY, Raised(exc), NOW)
    assert isinstance(rec, Dead)
    assert (rec.reason, rec.error) == ("not-retryable", "ValueError: boom")
    assert "raise ValueError" in rec.traceback


@pytest.mark.parametrize(
    ("attempt", "max_retries", "kind"),
    [(1, 3, RetryAt), (3, 3, RetryAt), (4, 3, Dead), (1, 0, Dead)],
)
def test_retry_on_errors_retry_while_attempts_remain(
    attempt: int, max_retries: int, kind: type
) -> None:
    rec = decide_outcome(
        facts(attempt, max_retries, retry_on=(FlakyError,)), POLICY, Raised(FlakyError("x")), NOW
    )
    assert isinstance(rec, kind)
    if isinstance(rec, Dead):
        assert rec.reason == "retries-exhausted"


def test_backoff_is_full_jitter_bounded_by_the_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        rec = decide_outcome(facts(attempt, 100), POLICY, Raised(Retry()), NOW, rng)
        assert isinstance(rec, RetryAt)
        ceiling_ms = min(60.0, 2.0 ** (attempt - 1)) * 1000
        assert NOW <= rec.due_ms <= NOW + ceiling_ms


def test_explicit_retry_delay_wins_over_backoff() -> None:
    rec = decide_outcome(facts(), POLICY, Raised(Retry(delay=12.5)), NOW)
    assert isinstance(rec, RetryAt) and rec.due_ms == NOW + 12_500


def test_remote_traceback_of_a_child_process_is_kept() -> None:
    rec = decide_outcome(facts(), POLICY, Raised(ValueError("x"), "child tb"), NOW)
    assert isinstance(rec, Dead) and rec.traceback == "child tb"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [(StopReason.CANCEL, CANCELLED), (StopReason.DRAIN, RELEASE), (StopReason.LOST, None)],
)
def test_stops_cancel_release_or_forget(reason: StopReason, expected: object) -> None:
    # identity, not ==: the record types are named tuples, and two empty ones compare equal
    assert decide_outcome(facts(), POLICY, Stopped(reason), NOW) is expected


def test_a_timeout_is_a_retryable_failure() -> None:
    rec = decide_outcome(facts(1, 2, timeout=5), POLICY, Stopped(StopReason.TIMEOUT), NOW)
    assert isinstance(rec, RetryAt) and "exceeded its timeout of 5.0 s" in rec.error
    last = decide_outcome(facts(3, 2), POLICY, Stopped(StopReason.TIMEOUT), NOW)
    assert isinstance(last, Dead) and last.reason == "retries-exhausted"


def test_a_thread_timeout_says_the_thread_was_abandoned() -> None:
    rec = decide_outcome(facts(interruptible=False), POLICY, Stopped(StopReason.TIMEOUT), NOW)
    assert isinstance(rec, RetryAt) and "thread was abandoned" in rec.error


def test_drain_never_consumes_a_retry_even_on_the_last_attempt() -> None:
    result: RunResult = Stopped(StopReason.DRAIN)
    assert decide_outcome(facts(attempt=9, max_retries=0), POLICY, result, NOW) is RELEASE


def test_job_timeout_raised_by_the_task_itself_is_retryable() -> None:
    rec = decide_outcome(facts(), POLICY, Raised(JobTimeout("slow")), NOW)
    assert isinstance(rec, RetryAt)
