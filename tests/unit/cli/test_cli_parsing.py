"""The bgq CLI's pure parts: argument parsing, option validation, formatting, exit codes."""

from __future__ import annotations

import math

import pytest

from bgq import cli
from bgq.cli import (
    EXIT_USAGE,
    CliError,
    build_parser,
    format_duration,
    format_fields,
    format_table,
    parse_json_option,
    parse_priority,
)


def parse(*argv: str) -> dict[str, object]:
    return vars(build_parser().parse_args(list(argv)))


def test_enqueue_options() -> None:
    ns = parse(
        "enqueue", "shop/emails", "app.send", "--args", "[1]", "--kwargs", '{"a":2}',
        "--job-id", "j1", "--delay", "1.5", "--priority", "high", "--unique-key", "u",
        "--timeout", "30", "--retries", "0", "--wait", "10",
    )  # fmt: skip
    assert ns["command"] == "enqueue"
    assert (ns["queue"], ns["task"], ns["args"], ns["kwargs"]) == (
        "shop/emails",
        "app.send",
        "[1]",
        '{"a":2}',
    )
    assert (ns["job_id"], ns["delay"], ns["priority"], ns["unique_key"]) == ("j1", 1.5, 0, "u")
    assert (ns["timeout"], ns["retries"], ns["wait"]) == (30.0, 0, 10.0)


def test_enqueue_defaults_and_bare_wait() -> None:
    ns = parse("enqueue", "q", "t")
    assert (ns["args"], ns["kwargs"], ns["wait"], ns["priority"]) == ("[]", "{}", None, None)
    assert parse("enqueue", "q", "t", "--wait")["wait"] == math.inf


def test_global_options_before_or_after_the_command() -> None:
    before = parse("--redis-url", "redis://a:1/0", "--json", "-n", "prod", "stats", "q")
    after = parse("stats", "q", "--redis-url", "redis://a:1/0", "--json", "-n", "prod")
    for ns in (before, after):
        assert (ns["redis_url"], ns["json"], ns["namespace"]) == ("redis://a:1/0", True, "prod")
    plain = parse("stats", "q")
    assert (plain["redis_url"], plain["json"], plain["namespace"]) == (None, False, None)


def test_stats_watch() -> None:
    assert parse("stats", "q")["watch"] is None
    assert parse("stats", "q", "--watch")["watch"] == 2.0
    assert parse("stats", "q", "-w", "0.5")["watch"] == 0.5


def test_dead_subcommands() -> None:
    ns = parse("dead", "purge", "q", "a", "b", "--yes")
    assert (ns["action"], ns["queue"], ns["ids"], ns["all"], ns["yes"]) == (
        "purge",
        "q",
        ["a", "b"],
        False,
        True,
    )
    assert parse("dead", "replay", "q", "--all")["all"] is True
    assert parse("dead", "list", "q")["limit"] == 100
    assert parse("dead", "list", "q", "--json")["json"] is True


def test_job_worker_gateway() -> None:
    assert parse("job", "q", "abc")["job_id"] == "abc"
    ns = parse("worker", "app.tasks", "-q", "shop/emails", "-c", "4")
    assert (ns["module"], ns["queue"], ns["concurrency"]) == ("app.tasks", "shop/emails", 4)
    assert parse("worker")["module"] is None
    ns = parse("gateway", "--port", "9000", "--host", "127.0.0.1")
    assert (ns["port"], ns["host"], ns["console"]) == (9000, "127.0.0.1", None)
    assert parse("gateway", "--console")["console"] is True


@pytest.mark.parametrize(
    ("argv", "env", "on"),
    [
        (["gateway"], "", False),
        (["gateway"], "true", True),
        (["gateway"], "0", False),
        (["gateway", "--console"], "false", True),  # the flag wins
    ],
)
def test_gateway_console_switch(
    argv: list[str], env: str, on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGQ_GATEWAY_CONSOLE", env)
    assert cli._gateway_console(build_parser().parse_args(argv)) is on


def test_gateway_console_switch_refuses_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGQ_GATEWAY_CONSOLE", "maybe")
    with pytest.raises(CliError) as info:
        cli._gateway_console(build_parser().parse_args(["gateway"]))
    assert info.value.code == EXIT_USAGE and "BGQ_GATEWAY_CONSOLE" in info.value.message


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice"),
        (["enqueue", "q"], "required: task"),
        (["enqueue", "q", "t", "--delay", "-1"], "--delay"),
        (["enqueue", "q", "t", "--delay", "nan"], "--delay"),
        (["enqueue", "q", "t", "--priority", "urgent"], "--priority"),
        (["enqueue", "q", "t", "--retries", "x"], "--retries"),
        (["stats", "q", "--watch", "0"], "--watch"),
        (["worker", "-c", "0"], "--concurrency"),
        (["gateway", "--port", "70000"], "--port"),
        (["dead", "q"], "invalid choice"),
    ],
)
def test_usage_errors_raise_cli_error(argv: list[str], needle: str) -> None:
    with pytest.raises(CliError) as info:
        build_parser().parse_args(argv)
    assert info.value.code == EXIT_USAGE
    assert needle in info.value.message


def test_main_reports_usage_errors_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["enqueue", "q", "t", "--delay", "soon"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("bgq: error: ")
    assert "--delay" in lines[0]
    assert "Traceback" not in captured.err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("worker", "enqueue", "stats", "dead", "job", "gateway"):
        assert command in out


def test_parse_json_option() -> None:
    assert parse_json_option("--args", "[1, 2]", list) == [1, 2]
    assert parse_json_option("--kwargs", '{"a": 1}', dict) == {"a": 1}
    with pytest.raises(CliError, match=r"^--args: not valid JSON \(") as bad:
        parse_json_option("--args", "[1,", list)
    assert bad.value.code == EXIT_USAGE
    with pytest.raises(CliError, match=r"^--kwargs: must be a JSON object, got list"):
        parse_json_option("--kwargs", "[]", dict)
    with pytest.raises(CliError, match=r"^--args: must be a JSON array, got int"):
        parse_json_option("--args", "3", list)


def test_parse_priority() -> None:
    assert [parse_priority(p) for p in ("high", "Normal", "low", "0", "2")] == [0, 1, 2, 0, 2]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-1, "-"),
        (0.0004, "0ms"),
        (0.85, "850ms"),
        (4.25, "4.2s"),
        (185, "3m05s"),
        (7380, "2h03m"),
        (3 * 86400 + 4 * 3600, "3d04h"),
        (math.inf, "-"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_table_aligns_and_right_aligns_numbers() -> None:
    table = format_table(["NAME", "COUNT", "NOTE"], [["a", 5, None], ["longer", 123, "x\ny"]])
    assert table.splitlines() == [
        "NAME    COUNT  NOTE",
        "a           5  -",
        "longer    123  x y",
    ]
    assert format_table(["A", "B"], []) == "A  B"


def test_format_fields() -> None:
    assert format_fields([("queue", "a/b"), ("in flight", 3), ("args", [1, "x"])]).splitlines() == [
        "queue      a/b",
        "in flight  3",
        'args       [1,"x"]',
    ]


def test_render_stats_with_workers() -> None:
    document = {
        "queue": "shop/emails",
        "backlog": 12,
        "in_flight": 3,
        "delayed": 4,
        "due": 1,
        "dead": 0,
        "oldest_ready_age_seconds": 3.25,
        "workers": [
            {
                "consumer": "pod-a:7",
                "state": "busy",
                "in_flight": 3,
                "concurrency": 10,
                "oldest_running_seconds": 2.5,
                "heartbeat_age_seconds": 0.4,
                "version": "0.1.0",
            },
            {
                "consumer": "pod-b:9",
                "state": "idle",
                "in_flight": 0,
                "concurrency": 10,
                "oldest_running_seconds": None,
                "heartbeat_age_seconds": 1.5,
                "version": "0.1.0",
            },
        ],
    }
    assert cli.render_stats(document).splitlines() == [
        "queue         shop/emails",
        "backlog       12",
        "in flight     3",
        "delayed       4 (1 due)",
        "dead          0",
        "oldest ready  3.2s",
        "workers       2 (1 busy, 1 idle)",
        "",
        "WORKER   STATE  IN FLIGHT  CONCURRENCY  OLDEST JOB  HEARTBEAT  VERSION",
        "pod-a:7  busy           3           10  2.5s        400ms ago  0.1.0",
        "pod-b:9  idle           0           10  -           1.5s ago   0.1.0",
    ]


def test_render_job_dead_with_traceback() -> None:
    document = {
        "id": "j1",
        "queue": "a/b",
        "task": "t",
        "state": "dead",
        "attempt": 4,
        "max_retries": 3,
        "enqueued_at": "2026-01-01T00:00:00.000+00:00",
        "started_at": "2026-01-01T00:00:01.000+00:00",
        "finished_at": None,
        "result": None,
        "error": "ValueError: x",
        "reason": "retries-exhausted",
        "traceback": "Traceback (most recent call last):\nValueError: x\n",
        "lease_expiries": 0,
        "cancel_requested": False,
        "args": [1],
        "kwargs": {},
    }
    now = 1767225610.0  # 2026-01-01T00:00:10Z
    text = cli.render_job(document, now=now)
    assert "state     dead\n" in text
    assert "attempt   4 of 4\n" in text
    assert "enqueued  2026-01-01T00:00:00.000+00:00  (10.0s ago)" in text
    assert "finished  -\n" in text
    assert "reason    retries-exhausted\nerror     ValueError: x" in text
    assert text.endswith("traceback:\nTraceback (most recent call last):\nValueError: x")
    assert "result" not in text


def test_render_dead_table() -> None:
    from bgq.client import DeadLetter

    letter = DeadLetter(
        entry_id="1-0",
        job_id="d1",
        reason="poison-pill",
        error="lease expired 5 times\n(worker died)",
        traceback="",
        dead_ms=1_000,
        envelope="{}",
        task="app.work",
    )
    anonymous = DeadLetter("2-0", "", "malformed-entry", "no id field", "", 0, "", "")
    assert cli.render_dead([letter, anonymous], now_ms=61_000).splitlines() == [
        "JOB ID       TASK      REASON           DIED       ERROR",
        "d1           app.work  poison-pill      1m00s ago  lease expired 5 times (worker died)",
        "(entry 2-0)  -         malformed-entry  -          no id field",
    ]
    assert cli.render_dead([], now_ms=0) == "no dead letters"


def test_render_job_shows_progress_and_checkpoint() -> None:
    document = {
        "id": "j2", "queue": "a/b", "task": "t", "state": "running", "attempt": 2,
        "max_retries": 3, "enqueued_at": "2026-01-01T00:00:00.000+00:00",
        "started_at": "2026-01-01T00:00:01.000+00:00", "finished_at": None, "result": None,
        "error": None, "reason": None, "traceback": None, "lease_expiries": 0,
        "cancel_requested": False, "args": [], "kwargs": {},
        "progress": {"fraction": 0.4, "detail": "page 4 of 10",
                     "updated_at": "2026-01-01T00:00:08.000+00:00"},
        "checkpoint": {"page": 4},
    }  # fmt: skip
    text = cli.render_job(document, now=1767225610.0)
    reported = "(reported 2026-01-01T00:00:08.000+00:00  (2.0s ago))"
    assert f"progress    40%  page 4 of 10  {reported}" in text
    assert 'checkpoint  {"page": 4}' in text
