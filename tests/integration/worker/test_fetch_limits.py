"""fetch.lua with pause and limits, called directly on a real redis-server (protocol level).

The clock is the caller's `now`, so the token-bucket maths is exact and deterministic.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import pytest
import redis

import bgq
from bgq.control import limits_document, set_limits, set_paused
from bgq.protocol import QueueName
from bgq.scripts import SCRIPTS

Q = QueueName.parse("lim/q")
K = Q.keys
LEASE = 30_000
T0 = 1_900_000_000_000  # a fixed "now" in ms, after the enqueue times


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def client(redis_url: str) -> bgq.Client:
    return bgq.Client(redis_url)


def fetch(
    r: redis.Redis, want: int, now: int, consumer: str = "w1", *adopt: Any, lease: int = LEASE
) -> tuple[int, list[dict[str, Any]]]:
    args = [K.prefix, consumer, want, now, lease, 5, 86_400_000, 86_400_000, *adopt]
    reply = cast(list[Any], SCRIPTS.fetch.run(r, [K.ready[1]], args))
    flat = json.loads(reply[2])
    jobs = [
        {"id": flat[i], "band": flat[i + 1], "entry": flat[i + 2], "token": flat[i + 3],
         "env": json.loads(flat[i + 5])}
        for i in range(0, len(flat), 6)
    ]  # fmt: skip
    return int(reply[0]), jobs


def pending_consumers(r: redis.Redis) -> list[dict[str, Any]]:
    return list(r.xpending(K.ready[1], "workers")["consumers"])


def settle_ok(r: redis.Redis, job: dict[str, Any], now: int) -> None:
    rec = ["ok", job["id"], job["band"], job["entry"], job["token"], "null", "", ""]
    SCRIPTS.settle.run(r, [K.ready[1]], [K.prefix, now, 86_400_000, 86_400_000, json.dumps([rec])])


def enqueue(client: bgq.Client, n: int, tenant: str | None = None, prefix: str = "j") -> list[str]:
    ids = []
    for i in range(n):
        kwargs = {"tenant": tenant} if tenant is not None else {}
        ids.append(client.enqueue_with(Q, "t", kwargs=kwargs, job_id=f"{prefix}{i}").id)
    return ids


def state(r: redis.Redis, job_id: str) -> str:
    return str(r.hget(K.job(job_id), "state"))


def test_global_rate_token_bucket(r: redis.Redis, client: bgq.Client) -> None:
    set_limits(r, Q, limits_document(rate=(5, 1.0)))  # 5 per second, burst 5
    enqueue(client, 20)
    nxt, got = fetch(r, 100, T0)
    assert [j["id"] for j in got] == [f"j{i}" for i in range(5)]  # the burst, in order
    assert nxt == T0 + 200  # one token every 200 ms: the reply says when to come back
    assert state(r, "j5") == "queued" and r.hget(K.job("j5"), "parked") == "1"
    assert fetch(r, 100, T0 + 199)[1] == []  # still no token
    _, got = fetch(r, 100, T0 + 200)
    assert [j["id"] for j in got] == ["j5"]
    _, got = fetch(r, 100, T0 + 1200)  # 1 s later: 5 more, never more than the bucket
    assert [j["id"] for j in got] == [f"j{i}" for i in range(6, 11)]
    # a parked job is not in any worker's hands: it is pending under the park consumer only
    owners = {c["name"]: int(c["pending"]) for c in pending_consumers(r)}
    assert owners == {"w1": 11, "~parked": 9}


def test_per_key_concurrency_no_head_of_line_blocking(r: redis.Redis, client: bgq.Client) -> None:
    set_limits(
        r,
        Q,
        limits_document(keys=[{"name": "tenant", "key_from": "kwargs.tenant", "concurrency": 2}]),
    )
    enqueue(client, 50, "hot", "h")  # one hot tenant first ...
    enqueue(client, 3, "cold", "c")  # ... then another tenant's jobs behind them
    nxt, got = fetch(r, 10, T0)
    ids = [j["id"] for j in got]
    assert ids == ["h0", "h1", "c0", "c1"]  # hot capped at 2; cold not blocked behind hot
    assert nxt == T0 + 200  # concurrency: looked at again soon (no polling storm)
    _, got = fetch(r, 10, T0 + 500)
    assert [j["id"] for j in got] == []  # both keys still at their limit
    # finishing one hot job frees exactly one hot slot; order within the key is kept
    settle_ok(r, got_h0 := next(j for j in got_all(r) if j["id"] == "h0"), T0 + 600)
    nxt, got = fetch(r, 10, T0 + 600)
    assert got == [] and nxt == T0 + 700  # the key is looked at again at its recheck time
    _, got = fetch(r, 10, T0 + 700)
    assert [j["id"] for j in got] == ["h2"]
    assert state(r, "h0") == "succeeded"
    del got_h0


def got_all(r: redis.Redis) -> list[dict[str, Any]]:
    """Jobs currently running (from their hashes), as settle needs them."""
    out = []
    for _, fields in cast(list[Any], r.xrange(K.ready[1])):
        h = cast(dict[str, str], r.hgetall(K.job(fields["id"])))
        if h.get("state") == "running":
            out.append(
                {
                    "id": fields["id"],
                    "band": int(h["band"]),
                    "entry": h["entry"],
                    "token": int(h["token"]),
                }
            )
    return out


def test_order_kept_within_key_and_default_key(r: redis.Redis, client: bgq.Client) -> None:
    set_limits(
        r,
        Q,
        limits_document(keys=[{"name": "tenant", "key_from": "kwargs.tenant", "rate": (1, 1.0)}]),
    )
    enqueue(client, 3, "a", "a")
    enqueue(client, 2, None, "x")  # no tenant kwarg: the documented default key `_default`
    _, got = fetch(r, 10, T0)
    assert [j["id"] for j in got] == ["a0", "x0"]
    assert r.exists(f"{K.prefix}:park:tenant=_default") == 1
    seen = []
    for step in range(1, 4):
        seen.append(sorted(j["id"] for j in fetch(r, 10, T0 + step * 1000)[1]))
    assert seen == [["a1", "x1"], ["a2"], []]  # each key in its own order, one per second


def test_pause_stops_fetching_and_keeps_jobs(r: redis.Redis, client: bgq.Client) -> None:
    enqueue(client, 3)
    r.xgroup_create(K.ready[1], "workers", id="0")  # as a starting worker does
    assert set_paused(r, Q, True, "cli")
    nxt, got = fetch(r, 10, T0)
    assert got == [] and nxt == -1
    # entries a blocking XREADGROUP handed to the worker are parked, not run
    reply = cast(list[Any], r.xreadgroup("workers", "w1", {K.ready[1]: ">"}, count=10))
    entries = [e for e, _ in reply[0][1]]
    assert len(entries) == 3
    adopt = [x for e in entries for x in (1, e)]
    _, got = fetch(r, 10, T0, "w1", *adopt)
    assert got == []
    assert all(state(r, f"j{i}") == "queued" for i in range(3))
    enqueue(client, 1, prefix="late")  # enqueues are still accepted while paused
    assert state(r, "late0") == "queued"
    assert not set_paused(r, Q, False, "cli")
    _, got = fetch(r, 10, T0 + 1)
    assert [j["id"] for j in got] == ["j0", "j1", "j2", "late0"]  # parked first, in order


def test_cancel_while_parked(r: redis.Redis, client: bgq.Client) -> None:
    set_limits(r, Q, limits_document(rate=(1, 10.0)))
    enqueue(client, 3)
    assert [j["id"] for j in fetch(r, 10, T0)[1]] == ["j0"]
    assert client.cancel(Q, "j1") == "cancelled"
    _, got = fetch(r, 10, T0 + 10_000)
    assert [j["id"] for j in got] == ["j2"]  # the cancelled one is dropped, never handed out
    assert r.xlen(K.ready[1]) == 2  # j0 and j2 (running); j1's entry is gone


def test_parked_entry_survives_reclaim_scans(r: redis.Redis, client: bgq.Client) -> None:
    set_limits(r, Q, limits_document(rate=(1, 3600.0)))
    enqueue(client, 2)
    assert [j["id"] for j in fetch(r, 10, T0)[1]] == ["j0"]
    time.sleep(0.3)
    r.delete(f"{K.prefix}:reclaiming")
    # idle longer than the lease: the reclaim scan sees the parked entry, keeps it parked
    _, got = fetch(r, 10, T0 + 1, "w2", lease=200)
    assert [j["id"] for j in got] == ["j0"]  # j0's lease expired: reclaimed (that is right)
    owners = {c["name"]: int(c["pending"]) for c in pending_consumers(r)}
    assert owners.get("~parked") == 1, owners
    assert state(r, "j1") == "queued" and r.hget(K.job("j1"), "parked") == "1"
    _, got = fetch(r, 10, T0 + 3_600_000, "w2")
    assert [j["id"] for j in got] == ["j1"]


def test_adopted_but_never_started_entry_is_not_lost(r: redis.Redis, client: bgq.Client) -> None:
    """A worker that died between its blocking read and adopting the entry: reclaimed, run."""
    enqueue(client, 1)
    r.xgroup_create(K.ready[1], "workers", id="0")
    r.xreadgroup("workers", "dead-worker", {K.ready[1]: ">"}, count=1)
    time.sleep(0.3)
    r.delete(f"{K.prefix}:reclaiming")
    _, got = fetch(r, 10, T0, "w2", lease=200)
    assert [j["id"] for j in got] == ["j0"]
    assert state(r, "j0") == "running"
