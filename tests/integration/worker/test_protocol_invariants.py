"""Randomised protocol test against real Redis: interleave enqueue, fetch (with instant lease
expiry, so workers constantly steal from each other), settle (fresh and stale), cancel and
replay; after every step check that each job is in exactly the place its state says, then
drain and check that every job ended in a final state. Nothing may be lost or duplicated."""

from __future__ import annotations

import random
import time
from typing import Any, cast

import pytest
import redis

import bgq
from bgq.protocol import QueueName
from bgq.testing import Delivery, fetch_jobs, settle_jobs

Q = "inv/jobs"
KEYS = QueueName.parse(Q).keys


def entries(r: redis.Redis) -> dict[tuple[str, str], str]:
    """(band, entry id) -> job id for every ready-stream entry (ids repeat across bands)."""
    out: dict[tuple[str, str], str] = {}
    for band, key in enumerate(KEYS.ready):
        for entry_id, fields in cast(list[tuple[str, dict[str, str]]], r.xrange(key)):
            out[str(band), entry_id] = fields.get("id", "")
    return out


def pending(r: redis.Redis) -> dict[tuple[str, str], str]:
    """(band, entry id) -> owning consumer."""
    out: dict[tuple[str, str], str] = {}
    for band, key in enumerate(KEYS.ready):
        try:
            rows = cast(list[dict[str, Any]], r.xpending_range(key, "workers", "-", "+", 10_000))
        except redis.ResponseError:
            continue
        for row in rows:
            out[str(band), row["message_id"]] = row["consumer"]
    return out


def check(r: redis.Redis, ids: set[str]) -> dict[str, str]:
    ents = entries(r)
    pel = pending(r)
    delayed = set(cast(list[str], r.zrange(KEYS.delayed, 0, -1)))
    dead_ids = [f["id"] for _, f in cast(list[tuple[str, dict[str, str]]], r.xrange(KEYS.dead))]
    states: dict[str, str] = {}
    for job_id in ids:
        h = cast(dict[str, str], r.hgetall(KEYS.job(job_id)))
        assert h, f"job {job_id} lost its record"
        state, where = h["state"], (h["band"], h.get("entry", ""))
        states[job_id] = state
        live = ents.get(where) == job_id
        if state == "queued":
            assert live and where not in pel, (job_id, h)
            assert job_id not in delayed
        elif state == "running":
            assert live and pel.get(where) == h["owner"], (job_id, h, pel.get(where))
            assert job_id not in delayed
        elif state in ("scheduled", "retrying"):
            assert job_id in delayed and not live, (job_id, h)
        else:
            assert state in ("succeeded", "dead", "cancelled"), state
            assert job_id not in delayed
            assert where not in pel, (job_id, h)
        if state == "dead":
            assert job_id in dead_ids
    for (band, entry_id), job_id in ents.items():  # no stray entries
        job_state = states.get(job_id)
        h_where = tuple(r.hmget(KEYS.job(job_id), "band", "entry"))
        # only a job cancelled while queued leaves its entry behind (fetch drops it later)
        assert (h_where == (band, entry_id) and job_state in ("queued", "running")) or (
            job_state == "cancelled"), (band, entry_id, job_id, job_state)
    return states


@pytest.mark.parametrize("seed", range(4))
def test_random_interleavings_keep_every_job_accounted_for(redis_url: str, seed: int) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    client = bgq.Client(redis_url)
    run_interleavings(r, client, seed)
    client.close()
    r.close()


def run_interleavings(r: Any, client: bgq.Client, seed: int) -> None:
    """The randomised run on ``r`` (any topology's client) and ``client`` (same Redis)."""
    rng = random.Random(seed)
    ids: set[str] = set()
    held: dict[str, list[Delivery]] = {"A": [], "B": [], "C": []}
    trail: list[str] = []
    for _ in range(250):
        op = rng.random()
        consumer = rng.choice(list(held))
        if op < 0.25 or not ids:
            spec = bgq.JobSpec(
                "t",
                priority=rng.choice(["high", "normal", "low"]),
                delay=rng.choice([None, None, 0.001]),
                unique_key=rng.choice([None, None, None, "u1", "u2"]),
            )
            job = client.enqueue_many(Q, [spec])[0]
            ids.add(job.id)
            trail.append(f"enqueue {job.id} {job.status} {spec.delay} {spec.unique_key}")
        elif op < 0.5:
            time.sleep(0.002)  # lets delayed jobs (1 ms) become due: the clock is the input
            r.delete(KEYS.prefix + ":reclaiming")  # no reclaim rate limit in this test
            lease = rng.choice([0, 60_000])
            got = fetch_jobs(r, Q, consumer, count=rng.randint(1, 4), lease_ms=lease,
                             max_deliveries=4)
            held[consumer].extend(got)
            trail.extend(f"{consumer} fetch lease{lease} {d.job_id} {d.entry} tok{d.token}"
                         for d in got)
        elif op < 0.8 and held[consumer]:
            d = held[consumer].pop(rng.randrange(len(held[consumer])))
            kind = rng.choice(["ok", "ok", "retry", "dead", "release", "cancelled"])
            a = int(time.time() * 1000) if kind == "retry" else ("not-retryable" if kind == "dead"
                                                                 else "1")
            res = settle_jobs(r, Q, [(kind, d, a, "err", "tb")])
            trail.append(f"{consumer} settle {kind} {d.job_id} {d.entry} tok{d.token} -> {res}")
        elif op < 0.9 and ids:
            victim = rng.choice(sorted(ids))
            trail.append(f"cancel {victim} -> {client.cancel(Q, victim)}")
        else:
            trail.append(f"replay {client.replay_dead(Q)}")
        try:
            check(r, ids)
        except AssertionError as exc:  # show the job's record and its history
            bad = str(exc)[2:34]
            h = r.hgetall(KEYS.job(bad))
            h.pop("env", None)
            history = [t for t in trail if bad in t or t.startswith("replay")]
            raise AssertionError("\n".join([str(h), *history])) from exc
    # drain: whoever fetches completes; all jobs must end final and nothing may remain
    for _ in range(200):
        time.sleep(0.002)
        r.delete(KEYS.prefix + ":reclaiming")
        got = fetch_jobs(r, Q, "drain", count=50, lease_ms=0, max_deliveries=1000)
        if got:
            settle_jobs(r, Q, [("ok", d, "1", "", "") for d in got])
        states = check(r, ids)
        if all(s in ("succeeded", "dead", "cancelled") for s in states.values()):
            break
    assert all(s in ("succeeded", "dead", "cancelled") for s in states.values()), states
    assert r.zcard(KEYS.delayed) == 0
    assert pending(r) == {}
    demand = client.stats(Q)
    assert (demand.backlog, demand.in_flight) == (0, 0)
