"""The bgq CLI end to end against a real redis-server: ``main([...])`` with captured output."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import bgq
from bgq.cli import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, main
from bgq.protocol import QueueName
from bgq.testing import Delivery, fetch_jobs, settle_jobs

pytestmark = pytest.mark.timeout(60)

QUEUE = "shop/emails"
Run = Callable[..., tuple[int, str, str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def run(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Run]:
    """``run(*argv) -> (code, stdout, stderr)`` with ``--redis-url`` set to the test server."""
    monkeypatch.delenv("BGQ_REDIS_URL", raising=False)
    monkeypatch.setenv("BGQ_NAMESPACE", "shop")

    def _run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--redis-url", redis_url, *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield _run


def dead_letter_jobs(url: str, queue: str, ids: list[str]) -> None:
    """Enqueue ``ids`` and fail each for good through the protocol's own fetch and settle
    scripts, exactly as a worker does after its last retry (a real worker test is below)."""
    client = bgq.Client(url)
    for job_id in ids:
        client.enqueue_with(queue, "app.tasks.explode", args=[job_id], job_id=job_id)
    client.close()
    r = redis.Redis.from_url(url, decode_responses=True)
    deliveries = fetch_jobs(r, queue, "test:1", count=len(ids))
    assert len(deliveries) == len(ids)
    records: list[tuple[str, Delivery, Any, str, str]] = []
    for d in deliveries:
        tb = f'Traceback (most recent call last):\n  File "tasks.py"\nValueError: {d.job_id}'
        records.append(("dead", d, "retries-exhausted", "ValueError: boom", tb))
    assert settle_jobs(r, queue, records) == [True] * len(ids)
    r.close()


def test_enqueue_then_stats_shows_backlog(run: Run) -> None:
    code, out, err = run("enqueue", QUEUE, "app.tasks.send", "--args", '["a@b.c"]')
    assert (code, err) == (EXIT_OK, "")
    assert out.startswith("enqueued job ") and out.rstrip().endswith(" on shop/emails")
    run("enqueue", "emails", "app.tasks.send", "--priority", "high", "--job-id", "j2")
    run("enqueue", QUEUE, "app.tasks.send", "--delay", "60")

    code, out, _ = run("stats", QUEUE)
    assert code == EXIT_OK
    lines = dict(line.split(None, 1) for line in out.splitlines() if line and "  " in line)
    assert lines["backlog"].strip() == "2"
    assert lines["delayed"].strip() == "1 (0 due)"

    code, out, _ = run("stats", QUEUE, "--json")
    stats = json.loads(out)
    assert (stats["queue"], stats["backlog"], stats["in_flight"], stats["delayed"]) == (
        QUEUE,
        2,
        0,
        1,
    )
    assert stats["workers"] == []
    assert stats["oldest_ready_age_seconds"] >= 0


def test_stats_watch_prints_one_json_line_per_refresh(run: Run) -> None:
    run("enqueue", QUEUE, "t")
    code, out, _ = run("stats", QUEUE, "--json", "--watch", "0.05", "--iterations", "3")
    assert code == EXIT_OK
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["backlog"] for d in docs] == [1, 1, 1]


def test_enqueue_json_is_idempotent_with_job_id(run: Run, redis_url: str) -> None:
    argv = ("enqueue", QUEUE, "app.tasks.send", "--job-id", "order-7", "--kwargs", '{"x": 1}')
    code, out, _ = run(*argv, "--json")
    assert code == EXIT_OK
    assert json.loads(out) == {
        "id": "order-7",
        "queue": QUEUE,
        "status": "enqueued",
        "created": True,
    }
    code, out, _ = run(*argv, "--json")
    assert json.loads(out)["status"] == "exists"
    keys = QueueName.parse(QUEUE).keys
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    env = json.loads(r.hget(keys.job("order-7"), "env") or "{}")
    assert (env["task"], env["kwargs"]) == ("app.tasks.send", {"x": 1})
    assert r.xlen(keys.ready[1]) == 1
    r.close()


def test_enqueue_options_reach_the_envelope(run: Run, redis_url: str) -> None:
    code, _, err = run(
        "enqueue", QUEUE, "t", "--job-id", "o1", "--priority", "low", "--timeout", "7",
        "--retries", "2", "--unique-key", "u1",
    )  # fmt: skip
    assert (code, err) == (EXIT_OK, "")
    code, out, _ = run("enqueue", QUEUE, "t", "--unique-key", "u1")
    assert out.strip() == "unique key held by job o1 on shop/emails: nothing enqueued"
    code, out, _ = run("job", QUEUE, "o1", "--json")
    job = json.loads(out)
    assert (job["priority"], job["timeout"], job["max_retries"], job["unique_key"]) == (
        2,
        7.0,
        2,
        "u1",
    )


def test_job_lookup_and_cancel(run: Run) -> None:
    run("enqueue", QUEUE, "app.tasks.send", "--job-id", "j1", "--args", "[1, 2]")
    code, out, _ = run("job", QUEUE, "j1")
    assert code == EXIT_OK
    fields = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert fields["state"].strip() == "queued"
    assert fields["task"].strip() == "app.tasks.send"
    assert fields["args"].strip() == "[1,2]"
    code, out, _ = run("job", QUEUE, "j1", "--json")
    assert json.loads(out)["state"] == "queued"

    code, out, _ = run("job", QUEUE, "j1", "--cancel")
    assert (code, out.strip()) == (EXIT_OK, "cancelled job j1")
    code, out, _ = run("job", QUEUE, "j1", "--json")
    assert json.loads(out)["state"] == "cancelled"


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (("job", QUEUE, "nope"), EXIT_NOT_FOUND, "job 'nope' not found in queue shop/emails"),
        (("job", QUEUE, "nope", "--cancel"), EXIT_NOT_FOUND, "not found"),
        (("stats", "Shop/emails"), EXIT_USAGE, "not a DNS-1123 label"),
        (("enqueue", "a/b/c", "t"), EXIT_USAGE, "more than one '/'"),
        (("enqueue", QUEUE, "t", "--args", "{"), EXIT_USAGE, "--args: not valid JSON"),
        (("enqueue", QUEUE, "t", "--kwargs", "[1]"), EXIT_USAGE, "--kwargs: must be a JSON object"),
        (("enqueue", QUEUE, "t", "--job-id", "a b"), EXIT_USAGE, "job id 'a b' is invalid"),
        (("dead", "replay", QUEUE), EXIT_USAGE, "give job ids, or --all"),
        (("dead", "purge", QUEUE, "x", "--all"), EXIT_USAGE, "not both"),
    ],
)
def test_expected_errors_are_one_line(
    run: Run, argv: tuple[str, ...], code: int, needle: str
) -> None:
    got, out, err = run(*argv)
    assert got == code, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("bgq: error: "), err
    assert needle in err
    assert "Traceback" not in err


def test_redis_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for argv in (["stats", QUEUE], ["enqueue", QUEUE, "t"], ["dead", "list", QUEUE]):
        assert main(["--redis-url", url, *argv]) == EXIT_FAILED
        err = capsys.readouterr().err
        assert err.startswith(f"bgq: error: cannot reach Redis at {url}"), err
        assert err.count("\n") == 1


def test_wait_timeout_and_result(run: Run, redis_url: str) -> None:
    code, out, err = run("enqueue", QUEUE, "t", "--job-id", "w1", "--wait", "0.2")
    assert code == EXIT_TIMEOUT
    assert "not finished after 0.2 s" in err
    # finish the job through the protocol, then --wait on the same id returns its result
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    (delivery,) = fetch_jobs(r, QUEUE, "t:1")
    assert settle_jobs(r, QUEUE, [("ok", delivery, '{"n": 3}', "", "")]) == [True]
    r.close()
    code, out, _ = run("enqueue", QUEUE, "t", "--job-id", "w1", "--wait", "5", "--json")
    assert code == EXIT_OK
    doc = json.loads(out)
    assert (doc["status"], doc["state"], doc["result"]) == ("exists", "succeeded", {"n": 3})


def test_dead_list_replay_purge(run: Run, redis_url: str) -> None:
    dead_letter_jobs(redis_url, QUEUE, ["d1", "d2", "d3"])

    code, out, _ = run("dead", "list", QUEUE)
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0].split() == ["JOB", "ID", "TASK", "REASON", "DIED", "ERROR"]
    assert [line.split()[0] for line in lines[1:]] == ["d1", "d2", "d3"]
    assert all("app.tasks.explode" in line and "retries-exhausted" in line for line in lines[1:])

    code, out, _ = run("dead", "list", QUEUE, "--json")
    letters = json.loads(out)
    assert [d["job_id"] for d in letters] == ["d1", "d2", "d3"]
    assert letters[0]["traceback"].endswith("ValueError: d1")

    # replay one by job id: it is queued again, the other two stay dead
    code, out, _ = run("dead", "replay", QUEUE, "d2")
    assert (code, out.strip()) == (EXIT_OK, "replayed 1 dead letter(s) on shop/emails")
    code, out, _ = run("job", QUEUE, "d2", "--json")
    assert json.loads(out)["state"] == "queued"
    code, out, _ = run("stats", QUEUE, "--json")
    assert (json.loads(out)["dead"], json.loads(out)["backlog"]) == (2, 1)

    # unknown ids change nothing
    code, _, err = run("dead", "purge", QUEUE, "d1", "zzz", "--yes")
    assert code == EXIT_NOT_FOUND and "no dead letter zzz" in err
    # purge refuses without --yes when nobody can confirm (stdin is not a terminal)
    code, _, err = run("dead", "purge", QUEUE, "--all")
    assert code == EXIT_USAGE and "add --yes" in err
    code, out, _ = run("stats", QUEUE, "--json")
    assert json.loads(out)["dead"] == 2

    code, out, _ = run("dead", "purge", QUEUE, "d1", "--yes", "--json")
    assert json.loads(out) == {"queue": QUEUE, "purged": 1}
    code, out, _ = run("dead", "replay", QUEUE, "--all", "--json")
    assert json.loads(out) == {"queue": QUEUE, "replayed": 1, "skipped": 0}
    code, out, _ = run("dead", "list", QUEUE)
    assert out.strip() == "no dead letters"

    dead_letter_jobs(redis_url, QUEUE, ["d4"])
    code, out, _ = run("dead", "purge", QUEUE, "--all", "--yes")
    assert (code, out.strip()) == (EXIT_OK, "purged 1 dead letter(s) from shop/emails")
