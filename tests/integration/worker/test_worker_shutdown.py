"""Shutdown at any moment of a worker process's life, on a real redis-server: a SIGTERM in the
first instant is honoured (exit 0, nothing fetched), and the drain's hard deadline holds even
when Redis stops answering (the job then returns by lease expiry: nothing lost)."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, cast

import pytest
import redis

import bgq
from bgq._runtime.drain import TEARDOWN_SECONDS
from bgq.protocol import QueueName
from conftest import QUEUE, SpawnWorker, wait_until, worker_alive

if TYPE_CHECKING:
    from tests.conftest import RedisServer

KEYS = QueueName.parse(QUEUE).keys


def job_fields(rdb: redis.Redis, ids: list[str], field: str) -> list[str | None]:
    pipe = rdb.pipeline(transaction=False)
    for i in ids:
        pipe.hget(KEYS.job(i), field)
    return cast(list[str | None], pipe.execute())


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0])
def test_sigterm_at_any_moment_of_startup_exits_0_and_loses_nothing(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis, delay: float
) -> None:
    client = bgq.Client(redis_url)
    jobs = client.enqueue_many(QUEUE, [bgq.JobSpec("pause", args=[300, i]) for i in range(6)])
    ids = [j.id for j in jobs]
    w = spawn_worker("s", block_signals=True, BGQ_CONCURRENCY=2, BGQ_DRAIN_SECONDS=5)
    time.sleep(delay)  # the controlled moment of the signal (not a wait for a condition)
    w.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = w.proc.wait(15)
    took = time.monotonic() - t0
    assert code == 0, w.logs()[-3000:]
    assert took < 5 + TEARDOWN_SECONDS, took
    # every job is either done or back in the queue with no retry and no lease expiry charged
    states = job_fields(rdb, ids, "state")
    assert set(states) <= {"queued", "succeeded"}, (states, w.logs()[-3000:])
    assert set(job_fields(rdb, ids, "attempt")) == {"1"}
    assert int(rdb.hget(KEYS.stats, "reclaimed") or 0) == 0
    if delay == 0.0:
        # the signal was pending before the interpreter ran a line: nothing was fetched
        assert states == ["queued"] * 6
        assert "worker started" not in w.logs()
    assert not worker_alive(rdb)
    # and another worker runs them all
    spawn_worker("t")
    wait_until(
        lambda: job_fields(rdb, ids, "state") == ["succeeded"] * 6, 15, "all jobs to succeed"
    )
    client.close()


def test_drain_deadline_holds_while_redis_is_stalled(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis, redis_server: RedisServer
) -> None:
    drain = 2.0
    client = bgq.Client(redis_url)
    job = client.enqueue(QUEUE, "pause", 1000, "x")
    w = spawn_worker("r", BGQ_DRAIN_SECONDS=drain, BGQ_LEASE_SECONDS=3)
    wait_until(lambda: job_fields(rdb, [job.id], "state") == ["running"], 10, "the job to start")
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        w.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = w.proc.wait(drain + 10)
        took = time.monotonic() - t0
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert code == 0, w.logs()[-3000:]
    # the operator's grace period is drain + 5 s: the worker is gone well before it
    assert took <= drain + TEARDOWN_SECONDS + 0.75, (took, w.logs()[-3000:])
    assert "return by lease expiry" in w.logs()
    assert job.id in w.logs()  # the log names the job it could not hand back
    # nothing lost: the job comes back after its lease and runs to completion elsewhere
    spawn_worker("q", BGQ_LEASE_SECONDS=3)
    wait_until(
        lambda: client.get(QUEUE, job.id).state is bgq.JobState.SUCCEEDED, 20, "the job to succeed"
    )
    assert client.get(QUEUE, job.id).result == "x"
    client.close()


def test_two_workers_on_one_host_start_without_port_flags(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis
) -> None:
    import contextlib
    import socket
    import urllib.request

    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(socket.socket())
        with contextlib.suppress(OSError):  # already taken by someone else: just as good
            holder.bind(("0.0.0.0", 8080))
            holder.listen()
        a = spawn_worker("pa", BGQ_HTTP_PORT=None)
        b = spawn_worker("pb", BGQ_HTTP_PORT=None)
        wait_until(lambda: len(worker_alive(rdb)) == 2, 15, "both workers to start")
        assert a.proc.poll() is None and b.proc.poll() is None
        for p in (a, b):
            line = next(x for x in p.logs().splitlines() if "serving probes and metrics" in x)
            port = int(line.split("on port ")[-1].split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as r:
                assert r.status == 200
    client = bgq.Client(redis_url)
    jobs = client.enqueue_many(QUEUE, [bgq.JobSpec("echo", args=[i]) for i in range(20)])
    for i, j in enumerate(jobs):
        assert client.wait(QUEUE, j.id, timeout=10) == i
    for p in (a, b):
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(10) == 0
    client.close()


def test_an_explicit_port_that_is_taken_is_a_clear_error(
    spawn_worker: SpawnWorker, redis_url: str
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        w = spawn_worker("pe", BGQ_HTTP_PORT=port)
        assert w.proc.wait(15) == 1
    assert f"cannot serve probes and metrics on port {port}" in w.logs()
