"""Schedules fire each tick exactly once, on a real redis-server, with real processes.

Each "operator" is a separate process running bgq_operator.schedules.run_schedules (the loop
the operator runs) on a warped clock: one real second is one minute, so a per-minute cron
ticks every second. Proofs: two processes at once; SIGKILL around ticks and a restart; Redis
down across ticks (fired on recovery within catchUp).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
import redis

if TYPE_CHECKING:
    from tests.conftest import RedisServer

QUEUE = "sched/q"
P = "bgq:{sched/q}"
SPEED = 60.0
HERE = Path(__file__).parent


def schedules(**catch_up: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "every",
            "cron": "* * * * *",
            "task": "tick",
            "kwargs": {"a": 1},
            "catchUp": {"maxTicks": 10, "windowSeconds": 3600, **catch_up},
        }
    ]


class Procs:
    def __init__(self, url: str, tmp: Path, specs: list[dict[str, Any]]) -> None:
        self.url, self.tmp, self.specs = url, tmp, json.dumps(specs)
        self.real0 = time.time()
        self.sim0 = 1767225600.0 + 30  # 2026-01-01T00:00:30Z, half-way between ticks
        self.procs: list[subprocess.Popen[bytes]] = []

    def sim(self) -> float:
        return self.sim0 + (time.time() - self.real0) * SPEED

    def start(self, tag: str) -> subprocess.Popen[bytes]:
        out = self.tmp / f"{tag}.jsonl"
        args = [
            sys.executable, str(HERE / "sched_proc.py"), self.url, QUEUE, self.specs,
            repr(self.real0), repr(self.sim0), repr(SPEED), str(out),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
        proc = subprocess.Popen(args, env=env)
        self.procs.append(proc)
        wait_for(lambda: out.exists() and "started" in out.read_text(), 20, f"{tag} started")
        return proc

    def lines(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for f in sorted(self.tmp.glob("*.jsonl")):
            for line in f.read_text().splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


@pytest.fixture
def procs_factory(tmp_path: Path) -> Iterator[Callable[[str, list[dict[str, Any]]], Procs]]:
    made: list[Procs] = []

    def make(url: str, specs: list[dict[str, Any]]) -> Procs:
        p = Procs(url, tmp_path, specs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def wait_for(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.02)


def stream_ids(r: redis.Redis) -> list[str]:
    """Job ids in the ready stream (one entry per created job)."""
    entries = cast(list[Any], r.xrange(f"{P}:ready:1"))
    return [str(f["id"]) for _, f in entries]


def tick_jobs(r: redis.Redis) -> list[int]:
    """Ticks (epoch) of every job the schedule created, from the ready stream (one per job)."""
    ids = stream_ids(r)
    assert all(i.startswith("sched:every:") for i in ids), ids
    return sorted(int(i.rsplit(":", 1)[1]) for i in ids)


def assert_contiguous(ticks: list[int], first_after: float) -> None:
    assert len(ticks) == len(set(ticks)), f"a tick fired twice: {ticks}"
    assert ticks, "no tick fired"
    assert all(t % 60 == 0 for t in ticks)
    assert ticks == list(range(ticks[0], ticks[-1] + 60, 60)), f"a tick is missing: {ticks}"
    assert ticks[0] <= first_after + 60


def test_two_operators_fire_each_tick_once(
    redis_url: str, procs_factory: Callable[[str, list[dict[str, Any]]], Procs]
) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    procs = procs_factory(redis_url, schedules())
    procs.start("a")
    procs.start("b")
    start = procs.sim()
    wait_for(lambda: len(stream_ids(r)) >= 6, 30, "6 ticks")
    procs.stop()
    ticks = tick_jobs(r)
    assert_contiguous(ticks, start)
    fired = [x for x in procs.lines() if x.get("outcome") == "fired"]
    assert sorted(int(x["tick"]) for x in fired) == ticks  # each tick created by one process
    assert not any("error" in x for x in procs.lines())
    env = json.loads(cast(str, r.hget(f"{P}:job:sched:every:{ticks[0]}", "env")) or "{}")
    assert env["task"] == "tick" and env["kwargs"] == {"a": 1}


@pytest.mark.parametrize("phase", [0.9, 0.0, 0.1])
def test_sigkill_around_a_tick(
    redis_url: str, procs_factory: Callable[[str, list[dict[str, Any]]], Procs], phase: float
) -> None:
    """Kill -9 just before / at / just after a tick; a restarted process fills the gap."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    procs = procs_factory(redis_url, schedules())
    a = procs.start("a")
    start = procs.sim()
    wait_for(lambda: len(stream_ids(r)) >= 2, 20, "2 ticks")
    # kill at `phase` of a tick period (1 real second per tick)
    wait_for(lambda: abs((procs.sim() % 60) / 60 - phase) < 0.03, 5, "the kill phase")
    os.kill(a.pid, signal.SIGKILL)
    a.wait(5)
    killed_at = procs.sim()
    time.sleep(2.5)  # ~2-3 ticks pass with no operator at all
    procs.start("b")
    wait_for(lambda: tick_jobs(r)[-1] >= killed_at + 240, 20, "ticks after the restart")
    procs.stop()
    assert_contiguous(tick_jobs(r), start)


def test_redis_down_across_ticks_fires_on_recovery(
    persistent_redis: RedisServer, procs_factory: Callable[[str, list[dict[str, Any]]], Procs]
) -> None:
    r = redis.Redis.from_url(persistent_redis.url, decode_responses=True)
    procs = procs_factory(persistent_redis.url, schedules())
    procs.start("a")
    start = procs.sim()
    wait_for(lambda: len(stream_ids(r)) >= 2, 20, "2 ticks")
    persistent_redis.stop()
    down_from = procs.sim()
    time.sleep(3.2)  # 3 ticks while Redis is down
    down_until = procs.sim()
    persistent_redis.start()
    r = redis.Redis.from_url(persistent_redis.url, decode_responses=True)
    wait_for(lambda: tick_jobs(r)[-1] >= down_until + 60, 20, "a tick after recovery")
    procs.stop()
    ticks = tick_jobs(r)
    assert_contiguous(ticks, start)
    during = [t for t in ticks if down_from < t < down_until]
    assert len(during) >= 2, f"ticks due while Redis was down were not fired: {ticks}"
    assert any("error" in x for x in procs.lines()), "Redis was never seen down"


def test_catch_up_limit_counts_missed(
    redis_url: str, procs_factory: Callable[[str, list[dict[str, Any]]], Procs]
) -> None:
    """maxTicks 1: after a 4-tick outage only the newest missed tick fires; the rest are missed."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    procs = procs_factory(redis_url, schedules(maxTicks=1))
    a = procs.start("a")
    wait_for(lambda: len(stream_ids(r)) >= 1, 20, "1 tick")
    a.kill()
    a.wait(5)
    before = tick_jobs(r)
    time.sleep(4.5)
    procs.start("b")
    wait_for(lambda: any(x.get("outcome") == "missed" for x in procs.lines()), 10, "missed")
    procs.stop()
    record = json.loads(cast(str, r.hget(f"{P}:schedules", "every")) or "{}")
    assert record["missed"] >= 2
    after = tick_jobs(r)
    assert len(after) - len(before) <= 3  # the catch-up tick plus on-time ones, not all 4+


async def test_a_simultaneous_race_creates_one_job(redis_url: str) -> None:
    """Two operators that read the same record at the same instant both try the tick: the
    idempotent enqueue gives one `fired` and one `exists` (deterministic version of the race)."""
    import asyncio

    from bgq.client import AsyncClient
    from bgq.connection import async_client
    from bgq.protocol import QueueName
    from bgq_operator.schedules import run_schedules
    from bgq_operator.spec import ScheduleSpec

    queue = QueueName.parse(QUEUE)
    specs = [ScheduleSpec.model_validate(s) for s in schedules()]
    a = AsyncClient(redis_client=async_client(redis_url), namespace="sched")
    b = AsyncClient(redis_client=async_client(redis_url), namespace="sched")
    base = 1767225600.0
    await run_schedules(a, queue, specs, base + 30)  # first sight: lastTick = base + 30
    await b.redis.ping()  # both connections open, so both read before either writes
    (out_a, _), (out_b, _) = await asyncio.gather(
        run_schedules(a, queue, specs, base + 60.5), run_schedules(b, queue, specs, base + 60.5)
    )
    outcomes = sorted(o.outcome for o in [*out_a, *out_b])
    assert outcomes == ["exists", "fired"]
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert stream_ids(r) == [f"sched:every:{int(base + 60)}"]
    await a.close()
    await b.close()
