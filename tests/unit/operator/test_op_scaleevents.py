"""Scale events folded per queue (bgq_operator.scaleevents): the first at once, the rest of a
run in one event at the end of the interval, reversals never held back, nothing lost at close."""

from __future__ import annotations

import asyncio
import time

from bgq_operator.scaleevents import ScaleEvents
from bgq_operator.state import QueueState

INTERVAL = 0.2


class Posted:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, float]] = []

    async def __call__(self, state: QueueState, reason: str, message: str) -> None:
        self.events.append((state.queue_name, reason, message, time.monotonic()))

    def texts(self) -> list[tuple[str, str, str]]:
        return [(q, r, m) for q, r, m, _ in self.events]


async def wait_for(posted: Posted, n: int, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while len(posted.events) < n:
        assert time.monotonic() < deadline, f"{len(posted.events)} events, not {n}"
        await asyncio.sleep(0.005)


async def test_the_first_change_is_posted_at_once_and_a_run_is_folded_into_one() -> None:
    posted = Posted()
    events = ScaleEvents(posted, INTERVAL)
    q = QueueState("shop", "orders")
    start = time.monotonic()
    await events.scaled(q, 0, 3, "demand 25")
    assert posted.texts() == [("shop/orders", "ScaledUp", "replicas 0 -> 3: demand 25")]
    await events.scaled(q, 3, 5, "demand 45")
    await events.scaled(q, 5, 7, "demand 70")
    assert len(posted.events) == 1, "changes within the interval wait"
    await wait_for(posted, 2)
    assert posted.texts()[1] == (
        "shop/orders", "ScaledUp", "replicas 3 -> 7: demand 70 (2 changes)"
    )
    assert posted.events[1][3] - start >= INTERVAL * 0.9, "folded until the interval ended"
    await asyncio.sleep(INTERVAL * 1.5)
    assert len(posted.events) == 2, "nothing posted twice"


async def test_a_single_folded_change_reads_like_an_unfolded_one() -> None:
    posted = Posted()
    events = ScaleEvents(posted, INTERVAL)
    q = QueueState("shop", "orders")
    await events.scaled(q, 0, 1, "a")
    await events.scaled(q, 1, 2, "b")
    await wait_for(posted, 2)
    assert posted.texts()[1][2] == "replicas 1 -> 2: b"


async def test_a_reversal_posts_what_was_folded_first_then_itself_at_once() -> None:
    posted = Posted()
    events = ScaleEvents(posted, INTERVAL)
    q = QueueState("shop", "orders")
    await events.scaled(q, 0, 3, "up")
    await events.scaled(q, 3, 5, "more")
    await events.scaled(q, 5, 2, "idle pods")
    assert posted.texts() == [
        ("shop/orders", "ScaledUp", "replicas 0 -> 3: up"),
        ("shop/orders", "ScaledUp", "replicas 3 -> 5: more"),
        ("shop/orders", "ScaledDown", "replicas 5 -> 2: idle pods"),
    ]
    await asyncio.sleep(INTERVAL * 1.5)
    assert len(posted.events) == 3, "the cancelled timer posted nothing"


async def test_queues_are_folded_separately() -> None:
    posted = Posted()
    events = ScaleEvents(posted, INTERVAL)
    a, b = QueueState("shop", "orders"), QueueState("shop", "mails")
    await events.scaled(a, 0, 1, "a")
    await events.scaled(b, 0, 1, "b")
    assert [r[0] for r in posted.texts()] == ["shop/orders", "shop/mails"]


async def test_after_a_quiet_interval_the_next_change_is_posted_at_once() -> None:
    posted = Posted()
    events = ScaleEvents(posted, INTERVAL)
    q = QueueState("shop", "orders")
    await events.scaled(q, 0, 1, "a")
    await asyncio.sleep(INTERVAL * 1.2)
    await events.scaled(q, 1, 2, "b")
    assert posted.texts()[-1][2] == "replicas 1 -> 2: b"


async def test_close_posts_what_is_still_folded() -> None:
    posted = Posted()
    events = ScaleEvents(posted, 60.0)
    q = QueueState("shop", "orders")
    await events.scaled(q, 0, 1, "a")
    await events.scaled(q, 1, 4, "b")
    await events.scaled(q, 4, 6, "c")
    await events.close()
    assert posted.texts()[-1] == ("shop/orders", "ScaledUp", "replicas 1 -> 6: c (2 changes)")
    assert len(posted.events) == 2
