"""The hook registry: order, error isolation, and the producer-side call in the client."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import bgq
from bgq.context import JobContext
from bgq.hooks import HOOKS, Attempt, EnqueueJob, Hook, HookRegistry


class Recorder(Hook):
    def __init__(self, name: str, calls: list[tuple[str, str]], fail: str = "") -> None:
        self.name, self.calls, self.fail = name, calls, fail

    def _rec(self, what: str) -> None:
        self.calls.append((self.name, what))
        if what == self.fail:
            raise RuntimeError(f"{self.name} broke in {what}")

    def before_enqueue(self, job: EnqueueJob) -> None:
        self._rec("before_enqueue")
        job.headers[f"x-{self.name}"] = "1"

    def before_run(self, attempt: Attempt) -> None:
        self._rec("before_run")

    def on_failure(self, attempt: Attempt, exc: BaseException, retry_in: float | None) -> None:
        self._rec("on_failure")

    def on_dead(self, attempt: Attempt, reason: str, error: str) -> None:
        self._rec("on_dead")

    def after_run(self, attempt: Attempt, outcome: str) -> None:
        self._rec("after_run")


def _attempt() -> Attempt:
    ctx = JobContext("j1", "ns/q", "t", 1, 3, {}, 1000)
    return Attempt(ctx, band=1, pod="p", started_ms=3500)


def _run_all(reg: HookRegistry) -> None:
    a = _attempt()
    reg.before_run(a)
    reg.on_failure(a, ValueError("x"), None)
    reg.on_dead(a, "retries-exhausted", "ValueError: x")
    reg.after_run(a, "dead")


def test_before_hooks_in_registration_order_after_hooks_reversed() -> None:
    calls: list[tuple[str, str]] = []
    reg = HookRegistry()
    reg.register(Recorder("a", calls))
    reg.register(Recorder("b", calls))
    _run_all(reg)
    assert calls == [
        ("a", "before_run"), ("b", "before_run"),
        ("b", "on_failure"), ("a", "on_failure"),
        ("b", "on_dead"), ("a", "on_dead"),
        ("b", "after_run"), ("a", "after_run"),
    ]  # fmt: skip


@pytest.mark.parametrize("where", ["before_run", "on_failure", "on_dead", "after_run"])
def test_a_failing_hook_is_logged_and_the_others_still_run(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, str]] = []
    reg = HookRegistry()
    reg.register(Recorder("a", calls, fail=where))
    reg.register(Recorder("b", calls))
    with caplog.at_level(logging.ERROR, "bgq.hooks"):
        _run_all(reg)  # never raises
    assert [c for c in calls if c[0] == "b"] == [
        ("b", w) for w in ("before_run", "on_failure", "on_dead", "after_run")
    ]
    assert reg.errors == 1
    assert f"Recorder.{where} failed" in caplog.text and "RuntimeError" in caplog.text


def test_register_is_idempotent_and_type_checked() -> None:
    reg = HookRegistry()
    hook = Hook()
    assert not reg
    reg.register(hook)
    reg.register(hook)
    assert list(reg) == [hook] and reg
    with pytest.raises(TypeError, match=r"subclass bgq\.hooks\.Hook"):
        reg.register(object())  # type: ignore[arg-type]
    reg.unregister(hook)
    reg.unregister(hook)
    assert not reg


def test_queue_wait_is_start_minus_enqueue() -> None:
    assert _attempt().queue_wait_ms == 2500
    assert Attempt(JobContext("j", "ns/q", "t", 1, 0, {}, 0)).queue_wait_ms == 0


@pytest.fixture
def registered() -> Any:
    added: list[Hook] = []

    def add(hook: Hook) -> Hook:
        added.append(HOOKS.register(hook))
        return hook

    yield add
    for hook in added:
        HOOKS.unregister(hook)


def test_client_calls_before_enqueue_and_keeps_its_headers(registered: Any) -> None:
    calls: list[tuple[str, str]] = []
    seen: list[EnqueueJob] = []

    class Look(Hook):
        def before_enqueue(self, job: EnqueueJob) -> None:
            seen.append(job)

    registered(Recorder("a", calls))
    registered(Look())
    client = bgq.Client("redis://127.0.0.1:1/0", namespace="ns")
    _, argv = client._core.enqueue_call("q", bgq.JobSpec("app.work", [1], priority="high"))
    env = bgq.Envelope.model_validate_json(argv[1])
    assert env.headers["x-a"] == "1"
    assert env.headers["traceparent"]  # the client's own default still applies after hooks
    (job,) = seen
    assert (job.queue, job.task, job.job_id, job.band) == ("ns/q", "app.work", env.id, 0)


def test_a_failing_before_enqueue_still_enqueues(registered: Any) -> None:
    calls: list[tuple[str, str]] = []
    registered(Recorder("a", calls, fail="before_enqueue"))
    client = bgq.Client("redis://127.0.0.1:1/0", namespace="ns")
    _, argv = client._core.enqueue_call("q", bgq.JobSpec("app.work"))
    assert bgq.Envelope.model_validate_json(argv[1]).task == "app.work"
