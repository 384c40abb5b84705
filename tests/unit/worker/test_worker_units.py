"""Unit tests of bgq's pure parts: queue names, envelope, backoff, settings, client argument
checks, task declaration, metrics rendering, URL redaction."""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bgq
from bgq._client_core import _Core
from bgq.backoff import backoff_seconds
from bgq.client import JobSpec
from bgq.connection import redact
from bgq.metrics import Metrics
from bgq.protocol import Envelope, QueueName, check_job_id, resolve_namespace
from bgq.settings import Settings
from bgq.task import lookup

# ---------------------------------------------------------------- queue names


def test_queue_name_full_and_bare() -> None:
    assert str(QueueName.parse("shop/emails", "x")) == "shop/emails"
    assert str(QueueName.parse("emails", "team-a")) == "team-a/emails"
    q = QueueName.parse("shop/emails")
    assert q.keys.prefix == "bgq:{shop/emails}"
    assert q.keys.ready == tuple(f"bgq:{{shop/emails}}:ready:{b}" for b in (0, 1, 2))
    assert q.keys.job("j") == "bgq:{shop/emails}:job:j"
    assert q.keys.uniq("k") == "bgq:{shop/emails}:uniq:k"
    assert q.keys.worker("pod:1") == "bgq:{shop/emails}:worker:pod:1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Shop/emails", "namespace 'Shop' is not a DNS-1123 label"),
        ("shop/", "the name is empty"),
        ("/emails", "the namespace is empty"),
        ("a/b/c", "more than one '/'"),
        ("shop/-x", "not a DNS-1123 label"),
        ("shop/" + "a" * 64, "longer than 63 characters"),
        ("shop/e_mails", "not a DNS-1123 label"),
    ],
)
def test_queue_name_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(bgq.InvalidQueueName, match=message):
        QueueName.parse(text, "default")


def test_namespace_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGQ_NAMESPACE", "from-env")
    assert resolve_namespace("explicit") == "explicit"
    assert resolve_namespace() == "from-env"
    assert str(QueueName.parse("q")) == "from-env/q"
    monkeypatch.delenv("BGQ_NAMESPACE")
    assert resolve_namespace() in ("default", resolve_namespace())


@given(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True))
def test_every_dns_label_is_a_valid_name(label: str) -> None:
    assert QueueName.parse(f"{label}/{label}").name == label


# ---------------------------------------------------------------- envelope, ids


def test_envelope_roundtrip_and_forward_compatibility() -> None:
    raw = json.dumps({"v": 1, "id": "a", "task": "t", "enqueued_at": 5, "future_field": [1]})
    env = Envelope.model_validate_json(raw)
    assert env.args == [] and env.kwargs == {} and env.priority == 1
    assert env.model_extra == {"future_field": [1]}


@pytest.mark.parametrize(
    "bad",
    [
        {"v": 2, "id": "a", "task": "t", "enqueued_at": 1},
        {"v": 1, "task": "t", "enqueued_at": 1},
        {"v": 1, "id": "a", "task": "", "enqueued_at": 1},
        {"v": 1, "id": "a", "task": "t", "enqueued_at": 1, "max_retries": -1},
        {"v": 1, "id": "a", "task": "t", "enqueued_at": 1, "timeout": 0},
        {"v": 1, "id": "a", "task": "t", "enqueued_at": 1, "args": {"x": 1}},
    ],
)
def test_envelope_rejects_invalid(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Envelope.model_validate_json(json.dumps(bad))


@pytest.mark.parametrize(
    "text", ["shop\n/emails", "shop/emails\n", "shop/emails\r", "\nshop/emails", "shop/e\x00"]
)
def test_queue_names_must_match_in_full(text: str) -> None:
    with pytest.raises(bgq.InvalidQueueName):
        QueueName.parse(text)


@pytest.mark.parametrize("job_id", ["order-1\n", "order-1\r\n", "\norder-1", "a\x00"])
def test_job_ids_must_match_in_full(job_id: str) -> None:
    with pytest.raises(bgq.ConfigError):
        check_job_id(job_id)


def test_client_refuses_a_queue_name_with_a_newline() -> None:
    with pytest.raises(bgq.InvalidQueueName):
        core().enqueue_call("shop\n/emails", JobSpec(task="t"))


def test_client_priority_is_strict() -> None:
    for bad in (True, False, 1.0, "1", 3, -1):
        with pytest.raises(bgq.ConfigError, match="priority"):
            core().enqueue_call("shop/emails", JobSpec(task="t", priority=bad))  # type: ignore[arg-type]


def test_client_payload_limits_are_payload_errors() -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(bgq.PayloadError, match="nested deeper than 64"):
        core().enqueue_call("shop/emails", JobSpec(task="t", args=[deep]))
    with pytest.raises(bgq.PayloadError, match="more than 100 digits"):
        core().enqueue_call("shop/emails", JobSpec(task="t", kwargs={"n": 10**100}))
    with pytest.raises(bgq.PayloadError):
        core().enqueue_call("shop/emails", JobSpec(task="t", args=[7**9000]))
    fine: list[Any] = []
    for _ in range(60):
        fine = [fine]
    _keys, argv = core().enqueue_call("shop/emails", JobSpec(task="t", args=[fine, 10**99]))
    assert json.loads(argv[1])["args"][1] == 10**99


def test_job_ids() -> None:
    assert check_job_id("order-42:v1") == "order-42:v1"
    for bad in ("", "has space", "x" * 201, "a{b}"):
        with pytest.raises(bgq.ConfigError):
            check_job_id(bad)


# ---------------------------------------------------------------- backoff


@given(st.integers(1, 100), st.floats(0, 10), st.floats(0, 1000))
def test_backoff_is_full_jitter_within_the_capped_ceiling(
    failures: int, base: float, cap: float
) -> None:
    value = backoff_seconds(failures, base, cap, random.Random(failures))
    assert 0 <= value <= min(cap, base * 2 ** (failures - 1)) + 1e-9


def test_backoff_grows_exponentially_on_average() -> None:
    rng = random.Random(1)
    means = [sum(backoff_seconds(n, 1, 1000, rng) for _ in range(2000)) / 2000 for n in (1, 3, 5)]
    assert means[0] == pytest.approx(0.5, rel=0.15)
    assert means[1] == pytest.approx(2.0, rel=0.15)
    assert means[2] == pytest.approx(8.0, rel=0.15)
    assert backoff_seconds(0, 1, 10) == 0


# ---------------------------------------------------------------- settings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGQ_REDIS_URL", "rediss://r:6380/1")
    monkeypatch.setenv("BGQ_QUEUE", "ns/q")
    monkeypatch.setenv("BGQ_CONCURRENCY", "7")
    monkeypatch.setenv("BGQ_DRAIN_SECONDS", "12.5")
    monkeypatch.setenv("BGQ_POD_NAME", "pod-a")
    monkeypatch.setenv("BGQ_LOG_FORMAT", "TEXT")
    s = Settings()
    assert (s.redis_url, s.queue, s.concurrency, s.drain_seconds) == ("rediss://r:6380/1", "ns/q",
                                                                       7, 12.5)
    assert s.pod_name == "pod-a" and s.log_format == "text"
    assert (s.lease_seconds, s.heartbeat_seconds, s.max_deliveries) == (30, 2, 5)
    assert (s.default_timeout_seconds, s.default_max_retries, s.http_port) == (300, 3, None)
    assert (s.result_ttl_seconds, s.dead_retention_seconds) == (86400, 604800)


@pytest.mark.parametrize(
    ("var", "value"),
    [("BGQ_CONCURRENCY", "0"), ("BGQ_LOG_LEVEL", "LOUD"), ("BGQ_HTTP_PORT", "70000"),
     ("BGQ_LEASE_SECONDS", "0")],
)
def test_settings_reject_bad_values(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var.removeprefix("BGQ_").lower()):
        Settings()


def test_worker_main_reports_configuration_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bgq.worker import main

    monkeypatch.delenv("BGQ_TASKS_MODULE", raising=False)
    monkeypatch.delenv("BGQ_QUEUE", raising=False)
    assert main(["--queue", "ns/q"]) == 2
    assert "no tasks module" in capsys.readouterr().err
    assert main(["json"]) == 2
    assert "no queue" in capsys.readouterr().err
    assert main(["no_such_module_xyz", "--queue", "ns/q"]) == 2
    assert "cannot import tasks module 'no_such_module_xyz'" in capsys.readouterr().err
    monkeypatch.setenv("BGQ_CONCURRENCY", "-1")
    assert main(["json", "--queue", "ns/q"]) == 2
    assert "invalid settings" in capsys.readouterr().err


# ---------------------------------------------------------------- client argument checks


def core(**kw: Any) -> _Core:
    return _Core("redis://x", "ns", None, None, kw.get("max_payload"), None)


def test_enqueue_call_layout() -> None:
    keys, argv = core().enqueue_call("q", JobSpec("t", [1], {"a": 2}, job_id="j1", priority="high",
                                                  unique_key="u", unique_ttl=1.5))
    assert keys == ["bgq:{ns/q}:job:j1", "bgq:{ns/q}:ready:0", "bgq:{ns/q}:delayed",
                    "bgq:{ns/q}:uniq:u", "bgq:{ns/q}:wake"]
    job_id, text, band, due, _now, ukey, ttl, queue, wake_trace = argv
    env = Envelope.model_validate_json(text)
    assert (job_id, band, due, ukey, ttl, queue) == ("j1", 0, 0, "u", 1500, "ns/q")
    assert env.args == [1] and env.kwargs == {"a": 2} and env.priority == 0
    assert env.headers["traceparent"].startswith("00-") and len(env.headers["traceparent"]) == 55
    assert wake_trace == env.headers["traceparent"]  # ARGV[9]: stored with the wake-up


def test_enqueue_call_wake_trace_is_bounded() -> None:
    _, argv = core().enqueue_call("q", JobSpec("t", headers={"traceparent": "x" * 257}))
    assert argv[8] == ""  # too long to copy next to the wake-up (the envelope keeps it)
    _, argv = core().enqueue_call("q", JobSpec("t", headers={"traceparent": "00-abc"}))
    assert argv[8] == "00-abc"  # copied verbatim; the operator ignores an invalid one


def test_enqueue_delay_and_eta() -> None:
    _, argv = core().enqueue_call("q", JobSpec("t", delay=dt.timedelta(seconds=2)))
    assert argv[3] - argv[4] == 2000
    eta = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    _, argv = core().enqueue_call("q", JobSpec("t", eta=eta))
    assert argv[3] == int(eta.timestamp() * 1000)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (JobSpec("t", delay=1, eta=dt.datetime.now(dt.UTC)), "either delay or eta"),
        (JobSpec("t", eta=dt.datetime(2030, 1, 1)), "timezone-aware"),
        (JobSpec("t", delay=-1), "delay must be >= 0"),
        (JobSpec("t", priority="urgent"), "priority must be"),
        (JobSpec("t", unique_ttl=5), "unique_ttl needs a unique_key"),
        (JobSpec("t", retries=-1), "retries must be >= 0"),
        (JobSpec("t", timeout=0), "timeout must be > 0"),
        (JobSpec("t", job_id="bad id"), "job id 'bad id' is invalid"),
        (JobSpec(42), "task must be a task name"),
    ],
)
def test_enqueue_option_errors(spec: JobSpec, message: str) -> None:
    with pytest.raises(bgq.ConfigError, match=message):
        core().enqueue_call("q", spec)


def test_payload_errors_name_the_argument_and_the_limit() -> None:
    with pytest.raises(bgq.PayloadError, match=r"argument 1 \(bytes\) of task 't'"):
        core().enqueue_call("q", JobSpec("t", ["ok", b"raw"]))
    with pytest.raises(bgq.PayloadError, match="keyword argument 'x'"):
        core().enqueue_call("q", JobSpec("t", kwargs={"x": float("nan")}))
    with pytest.raises(bgq.PayloadError, match="over the limit of 300 bytes"):
        core(max_payload=300).enqueue_call("q", JobSpec("t", ["x" * 400]))


def test_unknown_enqueue_option_is_a_clear_error() -> None:
    with pytest.raises(bgq.ConfigError, match="unknown enqueue option"):
        _Core.spec("t", (), None, {"delay_seconds": 3})


# ---------------------------------------------------------------- tasks


def test_task_decorator_and_registry() -> None:
    @bgq.task(name="unit_add", retries=2, timeout=5)
    def add(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) == 3 and add.task_name == "unit_add" and add.retries == 2
    assert lookup("unit_add") is add
    _, argv = core().enqueue_call("q", JobSpec(add))
    assert json.loads(argv[1])["task"] == "unit_add"
    with pytest.raises(bgq.UnknownTask, match="no task named 'nope'"):
        lookup("nope")
    with pytest.raises(bgq.ConfigError, match="already registered"):
        bgq.task(name="unit_add")(lambda: None)
    with pytest.raises(bgq.ConfigError, match="cpu_bound tasks must be plain"):

        @bgq.task(cpu_bound=True)
        async def nope() -> None: ...

    with pytest.raises(bgq.ConfigError, match="retry_on must hold exception types"):
        bgq.task(retry_on=(int,))(lambda: None)  # type: ignore[arg-type]


def test_current_job_outside_a_job_raises() -> None:
    with pytest.raises(bgq.BgqError, match="outside a running bgq job"):
        bgq.current_job()


# ---------------------------------------------------------------- metrics, redaction


def test_metrics_render_counters_and_histograms() -> None:
    m = Metrics("ns/q")
    m.counts["succeeded"] += 3
    m.drain["released_deadline"] += 1
    m.run_time.observe(0.002)
    m.run_time.observe(2.0)
    m.gauge("jobs_running", "running", lambda: 4)
    text = m.render().decode()
    assert 'bgq_jobs_succeeded_total{queue="ns/q"} 3.0' in text
    assert 'bgq_drain_jobs_total{outcome="released_deadline",queue="ns/q"} 1.0' in text
    assert 'bgq_job_run_seconds_bucket{le="0.005",queue="ns/q"} 1.0' in text
    assert 'bgq_job_run_seconds_bucket{le="+Inf",queue="ns/q"} 2.0' in text
    assert 'bgq_job_run_seconds_count{queue="ns/q"} 2.0' in text
    assert 'bgq_jobs_running{queue="ns/q"} 4.0' in text
    assert "bgq_stale_acks_total" in text and "bgq_lease_renewals_total" in text


def test_redact_hides_passwords() -> None:
    assert redact("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("rediss://user:pw@h/1") == "rediss://user:***@h/1"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
