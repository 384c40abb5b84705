"""Worker subprocesses (``python -m bgq.worker``) against a real redis-server: volume, crashes,
SIGTERM drain, poison pills, Redis restarts. Nothing may be lost."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, cast

import pytest
import redis

import bgq
from bgq.protocol import QueueName
from conftest import QUEUE, SpawnWorker, wait_until, worker_alive

if TYPE_CHECKING:
    from tests.conftest import RedisServer

KEYS = QueueName.parse(QUEUE).keys


def states(rdb: redis.Redis, ids: list[str]) -> list[str | None]:
    pipe = rdb.pipeline(transaction=False)
    for i in ids:
        pipe.hget(KEYS.job(i), "state")
    return cast(list[str | None], pipe.execute())


def test_10k_jobs_two_worker_processes_none_lost(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis
) -> None:
    n = 10_000
    client = bgq.Client(redis_url)
    jobs = client.enqueue_many(QUEUE, [bgq.JobSpec("echo", args=[i]) for i in range(n)])
    assert len({j.id for j in jobs}) == n and all(j.created for j in jobs)
    a = spawn_worker("a", BGQ_CONCURRENCY=50)
    b = spawn_worker("b", BGQ_CONCURRENCY=50)
    wait_until(lambda: int(rdb.hget(KEYS.stats, "succeeded") or 0) >= n, 90,
               f"{n} jobs to succeed")
    ids = [j.id for j in jobs]
    pipe = rdb.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(KEYS.job(i), "state", "result", "owner")
    rows = pipe.execute()
    assert [r[0] for r in rows] == ["succeeded"] * n
    assert [int(r[1]) for r in rows] == list(range(n))
    owners = {r[2].split(":")[0] for r in rows}
    assert owners == {a.name, b.name}, owners
    demand = client.stats(QUEUE)
    assert (demand.backlog, demand.in_flight, demand.dead) == (0, 0, 0)
    assert int(cast(str, rdb.hget(KEYS.stats, "succeeded"))) == n  # each once, no duplicates
    client.close()


def test_sigkill_mid_job_completes_elsewhere_within_lease_plus_15s(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis
) -> None:
    lease = 2.0
    client = bgq.Client(redis_url)
    a = spawn_worker("a", BGQ_LEASE_SECONDS=lease)
    wait_until(lambda: worker_alive(rdb, a.name), 15, "worker a to start")
    job = client.enqueue(QUEUE, "long_first_run", 120, "k")  # a crash, not a finish, ends it on a
    wait_until(lambda: rdb.lrange("bgqtest:k", 0, -1), 10, "the job to start on a")
    assert rdb.lrange("bgqtest:k", 0, -1) == [f"start:{job.id}:{a.pid}"]
    b = spawn_worker("b", BGQ_LEASE_SECONDS=lease)
    wait_until(lambda: worker_alive(rdb, b.name), 15, "worker b to start")
    a.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    a.proc.wait(5)
    wait_until(lambda: client.get(QUEUE, job.id).state is bgq.JobState.SUCCEEDED,
               lease + 15, "the job to complete on b within lease + 15 s")
    assert time.monotonic() - killed_at <= lease + 15
    events = rdb.lrange("bgqtest:k", 0, -1)
    assert events[-1] == f"done:{job.id}:{b.pid}"
    info = client.get(QUEUE, job.id)
    assert info.lease_expiries == 1 and info.attempt == 1  # a crash is not a failed attempt
    client.close()


def test_sigterm_drain_contract(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis
) -> None:
    drain = 4.0
    client = bgq.Client(redis_url)
    w = spawn_worker("d", BGQ_CONCURRENCY=3, BGQ_PREFETCH=3, BGQ_DRAIN_SECONDS=drain)
    wait_until(lambda: worker_alive(rdb, w.name), 15, "the worker to start")
    finishing = client.enqueue(QUEUE, "sleepy", 1.0, "fin")
    overdue = client.enqueue(QUEUE, "sleepy", 60, "over")
    cooperative = client.enqueue(QUEUE, "checkpointing", "coop")
    wait_until(lambda: rdb.llen("bgqtest:fin") and rdb.llen("bgqtest:over")
               and rdb.llen("bgqtest:coop"), 10, "three jobs running")
    batch = client.enqueue_many(QUEUE, [bgq.JobSpec("echo", args=[i]) for i in range(3)])
    unstarted = [j.id for j in batch]
    wait_until(lambda: states(rdb, unstarted) == ["running"] * 3, 10, "3 jobs prefetched")
    assert client.stats(QUEUE).in_flight == 6

    w.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    wait_until(lambda: states(rdb, unstarted) == ["queued"] * 3, 3, "unstarted jobs handed back")
    handed_back_after = time.monotonic() - t0
    assert handed_back_after < 1.5, handed_back_after
    wait_until(lambda: client.get(QUEUE, cooperative.id).state is bgq.JobState.SUCCEEDED, 3,
               "the cooperative job to see the shutdown and finish")
    assert client.get(QUEUE, cooperative.id).result == "checkpointed"
    wait_until(lambda: client.get(QUEUE, finishing.id).state is bgq.JobState.SUCCEEDED, 3,
               "the running job to finish during the drain")
    assert w.proc.wait(drain + 10) == 0
    exited_after = time.monotonic() - t0
    assert drain - 0.5 <= exited_after <= drain + 5, exited_after
    info = client.get(QUEUE, overdue.id)
    assert info.state is bgq.JobState.QUEUED and info.attempt == 1  # no retry consumed
    assert rdb.lrange("bgqtest:over", 0, -1) == [f"start:{overdue.id}:{w.pid}"]
    demand = client.stats(QUEUE)
    assert (demand.backlog, demand.in_flight, demand.delayed, demand.dead) == (4, 0, 0, 0)
    assert not worker_alive(rdb)  # heartbeat record removed on exit
    # nothing lost: another worker runs the handed-back jobs
    spawn_worker("e")
    for i, job_id in enumerate(unstarted):
        def succeeded(job_id: str = job_id) -> bool:
            return client.get(QUEUE, job_id).state is bgq.JobState.SUCCEEDED

        wait_until(succeeded, 10, "handed-back job to run")
        assert client.get(QUEUE, job_id).result == i
    wait_until(lambda: rdb.llen("bgqtest:over") == 2, 10, "the overdue job to start again")
    assert client.cancel(QUEUE, overdue.id) == "cancelling"
    client.close()


def test_second_sigterm_skips_to_deadline(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis
) -> None:
    client = bgq.Client(redis_url)
    w = spawn_worker("s", BGQ_DRAIN_SECONDS=60)
    wait_until(lambda: worker_alive(rdb, w.name), 15, "the worker to start")
    job = client.enqueue(QUEUE, "sleepy", 60, "s2")
    wait_until(lambda: rdb.llen("bgqtest:s2"), 10, "the job to start")
    w.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # let the first signal start the drain (not a wait for a result)
    w.proc.send_signal(signal.SIGINT)
    assert w.proc.wait(10) == 0
    info = client.get(QUEUE, job.id)
    assert info.state is bgq.JobState.QUEUED and info.attempt == 1
    client.close()


def test_poison_pill_stops_after_max_deliveries(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis
) -> None:
    client = bgq.Client(redis_url)
    job = client.enqueue(QUEUE, "kill_my_worker", "pp")
    env = {"BGQ_LEASE_SECONDS": 1, "BGQ_MAX_DELIVERIES": 2}
    w = spawn_worker("pp", **env)
    deadline = time.monotonic() + 40
    while client.get(QUEUE, job.id).state is not bgq.JobState.DEAD:
        assert time.monotonic() < deadline, "poison pill never dead-lettered"
        if w.proc.poll() is not None:
            w = spawn_worker("pp", **env)
        time.sleep(0.05)
    runs = rdb.lrange("bgqtest:pp", 0, -1)
    assert len(runs) == 2  # ran twice (2 lease expiries), then stopped
    dead = client.dead_letters(QUEUE)
    assert [d.job_id for d in dead] == [job.id] and dead[0].reason == "poison-pill"
    assert "lease expired 2 times" in dead[0].error
    # the last worker is healthy and keeps working
    assert client.wait(QUEUE, client.enqueue(QUEUE, "echo", "ok").id, timeout=15) == "ok"
    client.close()


@pytest.mark.slow
def test_redis_restart_loses_nothing(
    spawn_worker: SpawnWorker, persistent_redis: RedisServer, rdb: redis.Redis
) -> None:
    url = persistent_redis.url
    rdb_p = redis.Redis.from_url(url, decode_responses=True)
    client = bgq.Client(url)
    n = 1000
    jobs = client.enqueue_many(QUEUE, [bgq.JobSpec("pause", args=[10, i]) for i in range(n)])
    w = spawn_worker("r", url=url, BGQ_CONCURRENCY=10, BGQ_LEASE_SECONDS=3)
    wait_until(lambda: int(rdb_p.hget(KEYS.stats, "succeeded") or 0) >= 100, 30,
               "processing to get going")
    persistent_redis.restart()
    done_before = int(rdb_p.hget(KEYS.stats, "succeeded") or 0)
    assert done_before < n  # the restart happened mid-processing
    more = client.enqueue_many(QUEUE, [bgq.JobSpec("pause", args=[1, n + i]) for i in range(200)])
    ids = [j.id for j in jobs + more]
    wait_until(lambda: states(rdb_p, ids).count("succeeded") == len(ids), 60,
               "every job to succeed after the restart")
    pipe = rdb_p.pipeline(transaction=False)
    for i in ids:
        pipe.hget(KEYS.job(i), "result")
    assert [int(x) for x in pipe.execute()] == list(range(n + 200))
    assert w.proc.poll() is None  # the worker rode out the restart
    assert "retrying" in w.logs()
    rdb_p.close()
    client.close()


@pytest.mark.slow
def test_random_sigkills_lose_nothing(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis
) -> None:
    """Chaos: three workers, one SIGKILLed every ~0.6 s and replaced; every job succeeds once."""
    import random

    rng = random.Random(7)
    client = bgq.Client(redis_url)
    n = 2000
    env = {"BGQ_CONCURRENCY": 10, "BGQ_LEASE_SECONDS": 1, "BGQ_MAX_DELIVERIES": 50}
    workers = [spawn_worker("c", **env) for _ in range(3)]
    # all three hold jobs when the chaos starts (a worker still importing holds none)
    wait_until(lambda: len(worker_alive(rdb, "c")) == 3, 30, "three workers to start")
    jobs = client.enqueue_many(QUEUE, [bgq.JobSpec("pause", args=[50, i]) for i in range(n)])
    kills = 0
    deadline = time.monotonic() + 90
    while int(rdb.hget(KEYS.stats, "succeeded") or 0) < n:
        assert time.monotonic() < deadline, "jobs did not all complete"
        time.sleep(0.6)  # the chaos interval (what is being tested), not a wait for a result
        if kills < 5:
            victim = workers.pop(rng.randrange(len(workers)))
            victim.proc.kill()
            victim.proc.wait(5)
            kills += 1
            workers.append(spawn_worker("c", **env))
    ids = [j.id for j in jobs]
    assert states(rdb, ids) == ["succeeded"] * n
    pipe = rdb.pipeline(transaction=False)
    for i in ids:
        pipe.hget(KEYS.job(i), "result")
    assert [int(x) for x in pipe.execute()] == list(range(n))
    assert int(cast(str, rdb.hget(KEYS.stats, "succeeded"))) == n  # fenced: one success per job
    assert kills == 5 and int(rdb.hget(KEYS.stats, "reclaimed") or 0) >= 1
    assert client.stats(QUEUE).dead == 0
    client.close()


def test_sigterm_with_a_blocked_thread_task_still_exits_promptly(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis
) -> None:
    client = bgq.Client(redis_url)
    w = spawn_worker("t", BGQ_DRAIN_SECONDS=0.5)
    job = client.enqueue(QUEUE, "thread_sleep", 60, "ts")
    wait_until(lambda: rdb.llen("bgqtest:ts"), 15, "the thread task to start")
    w.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert w.proc.wait(10) == 0
    assert time.monotonic() - t0 < 0.5 + 2 + 2  # drain + cancel grace + slack
    info = client.get(QUEUE, job.id)
    assert info.state is bgq.JobState.QUEUED and info.attempt == 1
    client.close()
