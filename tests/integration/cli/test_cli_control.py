"""bgq pause/resume, bgq schedules (list, trigger) and bgq jobs list on a real redis-server."""

from __future__ import annotations

import json
import time

import pytest
import redis
from tests.integration.cli.test_cli_redis import Run, run

import bgq
from bgq.cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from bgq.control import paused_key, schedules_key
from bgq.protocol import QueueName
from bgq.testing import fetch_jobs

pytestmark = pytest.mark.timeout(60)

QUEUE = "shop/emails"
Q = QueueName.parse(QUEUE)
__all__ = ["run"]  # the fixture, shared with test_cli_redis.py


def test_pause_and_resume(run: Run, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    code, out, _ = run("pause", "emails")
    assert code == EXIT_OK and "shop/emails is paused (by bgq pause)" in out
    assert r.hkeys(paused_key(Q)) == ["cli"]
    r.hset(paused_key(Q), "spec", "1")  # what the operator writes for spec.paused
    code, out, _ = run("resume", "emails", "--json")
    assert code == EXIT_OK
    assert json.loads(out) == {"queue": "shop/emails", "paused": True, "by": ["spec"]}
    r.hdel(paused_key(Q), "spec")
    code, out, _ = run("pause", "emails")
    code, out, _ = run("resume", "emails")
    assert "running" in out and not r.exists(paused_key(Q))


def test_schedules_list_and_trigger(run: Run, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    code, out, _ = run("schedules", "emails")
    assert code == EXIT_OK and "no schedules" in out
    now = time.time()
    record = {
        "cron": "0 9 * * MON-FRI", "timeZone": "Europe/Berlin", "task": "app.tasks.digest",
        "args": [1], "kwargs": {"kind": "daily"}, "priority": 0, "overlap": "Skip",
        "suspend": False, "nextTick": now + 3600, "lastTick": now - 60,
        "lastOutcome": "fired", "lastJobId": "sched:digest:123", "missed": 2,
    }  # fmt: skip
    r.hset(schedules_key(Q), "digest", json.dumps(record))
    code, out, _ = run("schedules", "emails")
    assert code == EXIT_OK
    assert "digest" in out and "0 9 * * MON-FRI" in out and "Europe/Berlin" in out
    assert "in 59m" in out or "in 1h00m" in out
    code, out, _ = run("schedules", "emails", "--json")
    doc = json.loads(out)
    assert doc["schedules"][0]["name"] == "digest" and doc["schedules"][0]["missed"] == 2

    code, out, _ = run("schedules", "trigger", "emails", "digest", "--json")
    assert code == EXIT_OK
    job_id = json.loads(out)["id"]
    assert job_id.startswith("sched:digest:manual:")
    info = bgq.Client(redis_url).get(QUEUE, job_id)
    assert info.task == "app.tasks.digest" and info.envelope is not None
    assert (info.envelope.args, info.envelope.kwargs) == ([1], {"kind": "daily"})

    code, _, err = run("schedules", "trigger", "emails", "nope")
    assert code == EXIT_NOT_FOUND and "no schedule 'nope'" in err and "digest" in err
    code, _, err = run("schedules", "a", "b")
    assert code == EXIT_USAGE and "usage" in err


def test_jobs_list_by_state_task_and_pages(run: Run, redis_url: str) -> None:
    client = bgq.Client(redis_url)
    for i in range(7):
        client.enqueue_with(QUEUE, "app.tasks.a" if i % 2 else "app.tasks.b", job_id=f"q{i}")
    client.enqueue_with(QUEUE, "app.tasks.a", job_id="later", delay=600)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    running = fetch_jobs(r, QUEUE, "test:1", count=2)
    assert [d.job_id for d in running] == ["q0", "q1"]

    code, out, _ = run("jobs", "list", "emails", "--state", "running", "--json")
    assert code == EXIT_OK
    assert [j["id"] for j in json.loads(out)["jobs"]] == ["q0", "q1"]
    code, out, _ = run("jobs", "list", "emails", "--state", "queued", "--task", "app.tasks.a",
                       "--json")  # fmt: skip
    assert [j["id"] for j in json.loads(out)["jobs"]] == ["q3", "q5"]
    code, out, _ = run("jobs", "list", "emails", "--state", "scheduled", "--json")
    (job,) = json.loads(out)["jobs"]
    assert job["id"] == "later" and job["due_ms"] > time.time() * 1000

    # pages of 2 over every state: each job once, in order, then no cursor
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        argv = ["jobs", "list", "emails", "--limit", "2", "--json"]
        if cursor:
            argv += ["--cursor", cursor]
        code, out, _ = run(*argv)
        page = json.loads(out)
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["cursor"]
        if not cursor:
            break
    assert seen == [f"q{i}" for i in range(7)] + ["later"]

    code, out, _ = run("jobs", "list", "emails", "--limit", "3")
    assert code == EXIT_OK and "more: bgq jobs list shop/emails --cursor" in out
    code, _, err = run("jobs", "list", "emails", "--cursor", "zz:1")
    assert code == EXIT_USAGE and "invalid cursor" in err
    code, _, err = run("jobs", "list", "emails", "--state", "succeeded")
    assert code == EXIT_USAGE
