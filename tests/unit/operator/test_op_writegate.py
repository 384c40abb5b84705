"""The write gate: bookkeeping writes (status, events) wait while a scale-up from zero is on its
way, also those already waiting for a slot, and never longer than URGENT_HOLD_S."""

from __future__ import annotations

import asyncio

import pytest

from bgq_operator import reconcile
from bgq_operator.reconcile import WriteGate


async def test_bookkeeping_waits_for_a_scale_up_from_zero() -> None:
    gate = WriteGate(slots=1)
    order: list[str] = []
    release_first = asyncio.Event()

    async def write(name: str, hold: asyncio.Event | None = None) -> None:
        async with gate.bookkeeping():
            order.append(name)
            if hold is not None:
                await hold.wait()

    first = asyncio.create_task(write("first", release_first))
    await asyncio.sleep(0)
    assert order == ["first"]
    queued = asyncio.create_task(write("queued"))  # waits for the one slot
    await asyncio.sleep(0)
    gate.begin_urgent()  # a queue woken from rest is being decided
    late = asyncio.create_task(write("late"))
    release_first.set()  # the slot frees while the scale-up is pending
    await first
    for _ in range(20):
        await asyncio.sleep(0)
    assert order == ["first"], "no bookkeeping write may start before the scale PATCH"
    await gate.urgent_done(asyncio.get_running_loop().time())  # a past deadline: no wait
    gate.end_urgent()
    await asyncio.wait_for(asyncio.gather(queued, late), 5)
    assert sorted(order[1:]) == ["late", "queued"]
    assert gate.urgent == 0


async def test_bookkeeping_is_held_back_at_most_urgent_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile, "URGENT_HOLD_S", 0.05)
    gate = WriteGate()
    gate.begin_urgent()  # never ended (a decision stuck on an unreachable Redis)
    done = asyncio.Event()

    async def write() -> None:
        async with gate.bookkeeping():
            done.set()

    await asyncio.wait_for(write(), 5)
    assert done.is_set() and gate.urgent == 1
    gate.end_urgent()
    gate.end_urgent()  # an extra end does not go below zero
    assert gate.urgent == 0
