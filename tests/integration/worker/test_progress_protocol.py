"""renew.lua's progress records and the client's view of them, on a real redis-server.

The worker side (the lease keeper sending them, the next attempt's ``last_checkpoint``) is
tested with real worker processes in test_worker_progress.py.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from typing import Any

import redis

import bgq
from bgq.progress import MARKER, Progress, encode_checkpoint, encode_progress, renew_args
from bgq.protocol import QueueName
from bgq.scripts import SCRIPTS
from conftest import QUEUE, wait_until

Q = QueueName.parse(QUEUE)


def _running_job(rdb: redis.Redis, client: bgq.Client) -> tuple[str, str]:
    """Enqueue a job and make it look delivered to consumer "c" (token 1)."""
    job = client.enqueue(QUEUE, "app.work")
    stream = Q.keys.ready[1]
    rdb.xgroup_create(stream, "workers", id="0", mkstream=True)
    reply: Any = rdb.xreadgroup("workers", "c", {stream: ">"}, count=1)
    entry = str(reply[0][1][0][0])
    rdb.hset(Q.keys.job(job.id), mapping={"state": "running", "token": "1", "entry": entry})
    return job.id, entry


def _renew(rdb: redis.Redis, job_id: str, entry: str, token: str, tail: list[object]) -> object:
    return SCRIPTS.renew.run(
        rdb, [Q.keys.ready[1]], [Q.keys.prefix, "c", job_id, 1, entry, token, *tail]
    )


def test_renew_without_progress_records_replies_as_before(
    rdb: redis.Redis, redis_url: str
) -> None:
    client = bgq.Client(redis_url)
    job_id, entry = _running_job(rdb, client)
    assert _renew(rdb, job_id, entry, "1", []) == [1]
    assert _renew(rdb, job_id, entry, "9", []) == [0]  # stale token: lost, as always
    assert rdb.hget(Q.keys.job(job_id), "progress") is None


def test_progress_records_are_stored_fenced_and_add_nothing_to_the_reply(
    rdb: redis.Redis, redis_url: str
) -> None:
    client = bgq.Client(redis_url)
    job_id, entry = _running_job(rdb, client)
    progress = encode_progress(0.25, "page 1 of 4", 1000)
    tail = renew_args([(job_id, 1, progress, encode_checkpoint({"page": 1}))])
    assert tail[:4] == list(MARKER)
    assert _renew(rdb, job_id, entry, "1", tail) == [1]
    info = client.get(QUEUE, job_id)
    assert info.progress == Progress(0.25, "page 1 of 4", 1000)
    assert info.checkpoint == {"page": 1}
    # a worker whose token is stale (the job was reclaimed) cannot overwrite them
    stale = renew_args([(job_id, 7, encode_progress(0.9, "stale", 2000), encode_checkpoint(9))])
    assert _renew(rdb, job_id, entry, "7", stale) == [0]
    info = client.get(QUEUE, job_id)
    assert info.progress is not None and info.progress.detail == "page 1 of 4"
    assert info.checkpoint == {"page": 1}
    # '' leaves a field as it is
    only_progress = renew_args([(job_id, 1, encode_progress(0.5, "", 3000), "")])
    assert _renew(rdb, job_id, entry, "1", only_progress) == [1]
    info = client.get(QUEUE, job_id)
    assert info.progress == Progress(0.5, "", 3000) and info.checkpoint == {"page": 1}
    assert renew_args([(job_id, 1, "", "")]) == []  # nothing pending: the plain renewal
    client.close()


def _at_least(items: list[Progress], n: int) -> bool:
    return len(items) >= n


def test_wait_calls_on_progress_for_each_new_report(rdb: redis.Redis, redis_url: str) -> None:
    client = bgq.Client(redis_url)
    job_id, entry = _running_job(rdb, client)
    seen: list[Progress] = []
    result: list[object] = []

    def waiter() -> None:
        result.append(client.wait(QUEUE, job_id, timeout=20, on_progress=seen.append))

    thread = threading.Thread(target=waiter)
    thread.start()
    for i, fraction in enumerate((0.3, 0.6)):
        update = (job_id, 1, encode_progress(fraction, f"s{i}", i), "")
        _renew(rdb, job_id, entry, "1", renew_args([update]))
        wait_until(functools.partial(_at_least, seen, i + 1), 10, f"progress report {i + 1}")
    # finish the job the way settle.lua does for a waiter
    rdb.hset(Q.keys.job(job_id), mapping={"state": "succeeded", "result": "42"})
    rdb.rpush(Q.keys.done(job_id), "succeeded")
    thread.join(20)
    assert result == [42]
    assert [p.fraction for p in seen] == [0.3, 0.6]
    assert [p.detail for p in seen] == ["s0", "s1"]
    client.close()


def test_fetch_hands_the_saved_checkpoint_to_the_next_delivery(
    rdb: redis.Redis, redis_url: str
) -> None:
    client = bgq.Client(redis_url)
    with_cp = client.enqueue(QUEUE, "app.work")
    without = client.enqueue(QUEUE, "app.work")
    rdb.hset(Q.keys.job(with_cp.id), "checkpoint", encode_checkpoint({"row": 7}))
    args = [Q.keys.prefix, "c", 10, int(time.time() * 1000), 30_000, 5, 60_000, 60_000]
    reply = SCRIPTS.fetch.run(rdb, [Q.keys.ready[1]], args)
    assert int(reply[1]) == 2
    assert reply[4] == 0  # no poison pills
    assert json.loads(reply[5]) == {with_cp.id: '{"row":7}'}
    assert without.id not in json.loads(reply[5])
    empty = SCRIPTS.fetch.run(rdb, [Q.keys.ready[1]], args)
    assert (int(empty[1]), empty[5]) == (0, "{}")
    client.close()


def test_fetch_counts_the_poison_pills_it_dead_letters(rdb: redis.Redis, redis_url: str) -> None:
    client = bgq.Client(redis_url)
    job = client.enqueue(QUEUE, "app.work")
    now = int(time.time() * 1000)
    first = [Q.keys.prefix, "c1", 1, now, 30_000, 1, 60_000, 60_000]
    assert int(SCRIPTS.fetch.run(rdb, [Q.keys.ready[1]], first)[1]) == 1  # c1 holds it
    time.sleep(0.01)
    rdb.delete(f"{Q.keys.prefix}:reclaiming")  # the reclaim pass runs at most every lease/4
    # c2 with a 1 ms lease: c1's lease expired; max deliveries 1 -> poison pill
    second = [Q.keys.prefix, "c2", 1, now + 10, 1, 1, 60_000, 60_000]
    reply = SCRIPTS.fetch.run(rdb, [Q.keys.ready[1]], second)
    assert (int(reply[1]), int(reply[3]), int(reply[4])) == (0, 1, 1)
    (letter,) = client.dead_letters(QUEUE)
    assert letter.job_id == job.id and letter.reason == "poison-pill"
    client.close()
