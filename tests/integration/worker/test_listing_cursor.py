"""Job listing's delayed-set cursor on a real redis-server: stable while jobs come and go.

The cursor is the last listed (score, member), not an offset: jobs added or removed before it
while paging neither make the next page skip a job nor list one twice (bgq/lua/delayed_page.lua).
"""

from __future__ import annotations

import random
import time

import pytest
import redis

import bgq
from bgq.errors import ConfigError
from bgq.listing import alist_jobs, list_jobs
from bgq.protocol import QueueName

Q = QueueName.parse("list/q")
K = Q.keys
DUE = int(time.time() * 1000) + 3_600_000  # an hour from now: nothing gets promoted


def schedule(client: bgq.Client, ids: list[str], due: list[int]) -> None:
    """Delayed jobs with exactly these due times (many equal: ties are the hard part)."""
    now = int(time.time() * 1000)
    pairs = list(zip(ids, due, strict=True))
    client.enqueue_many(Q, [bgq.JobSpec("t", job_id=i, delay=(d - now) / 1000) for i, d in pairs])
    r = client.redis
    for i, d in pairs:  # the exact ms (delay= rounds through a float)
        r.zadd(K.delayed, {i: d})


def delayed_order(r: redis.Redis) -> list[str]:
    return [str(m) for m in r.zrange(K.delayed, 0, -1)]


def page_through(client: bgq.Client, limit: int, between: object = None) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10_000):
        page = list_jobs(client.redis, Q, states=["scheduled"], limit=limit, cursor=cursor)
        seen += [j.id for j in page.jobs]
        cursor = page.cursor
        if cursor is None:
            return seen
        if callable(between):
            between(seen)
    raise AssertionError("paging did not end")


def test_pages_follow_score_then_member_with_ties(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    with bgq.Client(redis_url) as client:
        ids = [f"j{i:03d}" for i in range(450)]
        # 3 distinct due times only: 150 jobs share each score; ids with upper/lower case and
        # punctuation so the member order is bytewise, not the server locale's
        ids = [i if n % 3 else i.upper() for n, i in enumerate(ids)] + ["a.b", "A-b", "_z", "Z"]
        due = [DUE + 1000 * (n % 3) for n in range(len(ids))]
        schedule(client, ids, due)
        expected = delayed_order(r)
        assert len(expected) == 454
        for limit in (1, 7, 200, 1000):
            assert page_through(client, limit) == expected, limit
        page = list_jobs(client.redis, Q, states=["scheduled"], limit=3)
        assert [j.due_ms for j in page.jobs] == [DUE] * 3
        assert page.cursor == f"d:{DUE}:{expected[2]}"


def test_paging_while_jobs_are_added_and_removed(redis_url: str) -> None:
    """Every job present from the first page to the last is listed exactly once."""
    rng = random.Random(7)
    with bgq.Client(redis_url) as client:
        ids = [f"s{i:04d}" for i in range(600)]
        due = [DUE + rng.randrange(0, 40) for _ in ids]  # ~15 jobs per score
        schedule(client, ids, due)
        stable = set(ids)
        added: list[str] = []
        n = 0

        def churn(seen: list[str]) -> None:
            nonlocal n
            # remove 3 jobs (listed or not) and add 3 anywhere, also before the cursor
            for victim in rng.sample(sorted(stable - {seen[-1]}), 3):
                client.cancel(Q, victim)  # cancel takes it out of the delayed set
                stable.discard(victim)
            new = [f"n{n + k:04d}" for k in range(3)]
            n += 3
            schedule(client, new, [DUE + rng.randrange(0, 40) for _ in new])
            added.extend(new)

        seen = page_through(client, 9, churn)
    assert len(seen) == len(set(seen)), "a job was listed twice"
    assert stable <= set(seen), f"skipped: {sorted(stable - set(seen))[:5]}"
    assert set(seen) <= set(ids) | set(added)
    assert len(added) > 150  # the churn really ran, page after page


async def test_async_twin_and_bad_cursors(redis_url: str) -> None:
    with bgq.Client(redis_url) as client:
        schedule(client, ["x1", "x2", "x3"], [DUE, DUE, DUE + 5])
    async with bgq.AsyncClient(redis_url) as aclient:
        page = await alist_jobs(aclient.redis, Q, states=["scheduled"], limit=2)
        assert [j.id for j in page.jobs] == ["x1", "x2"] and page.cursor == f"d:{DUE}:x2"
        page = await alist_jobs(aclient.redis, Q, states=["scheduled"], cursor=page.cursor)
        assert [j.id for j in page.jobs] == ["x3"] and page.cursor is None
        # the cursor survives its own entry being removed: x2 gone, the next page is still x3
        await aclient.redis.zrem(K.delayed, "x2")
        page = await alist_jobs(
            aclient.redis, Q, states=["scheduled"], cursor=f"d:{DUE}:x2"
        )
        assert [j.id for j in page.jobs] == ["x3"]
        for bad in ("d:12", "d:abc:x1", "d:1e999999:x", "d:inf:x", "d::x", "d:1:"):
            with pytest.raises(ConfigError, match="invalid cursor"):
                await alist_jobs(aclient.redis, Q, states=["scheduled"], cursor=bad)
