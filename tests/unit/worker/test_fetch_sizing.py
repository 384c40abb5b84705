"""Fetch sizing and blocking rules of the fetcher (pure functions)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bgq._runtime.fetcher import BUSY_BLOCK_MS, MAX_BLOCK_MS, block_ms, fetch_room


def test_room_is_free_slots_plus_prefetch() -> None:
    assert fetch_room(held=0, concurrency=10, limit=20) == 20
    assert fetch_room(held=5, concurrency=10, limit=20) == 15


def test_with_every_slot_spoken_for_wait_for_half_the_room() -> None:
    assert fetch_room(held=10, concurrency=10, limit=20) == 10  # exactly half free: fetch
    assert fetch_room(held=11, concurrency=10, limit=20) == 0  # less than half: wait
    assert fetch_room(held=20, concurrency=10, limit=20) == 0


def test_no_prefetch_fetches_as_slots_free() -> None:
    assert fetch_room(held=9, concurrency=10, limit=10) == 1
    assert fetch_room(held=10, concurrency=10, limit=10) == 0


@given(
    held=st.integers(min_value=0, max_value=500),
    concurrency=st.integers(min_value=1, max_value=200),
    prefetch=st.integers(min_value=0, max_value=200),
)
def test_never_fetches_past_the_limit(held: int, concurrency: int, prefetch: int) -> None:
    limit = concurrency + prefetch
    room = fetch_room(held, concurrency, limit)
    assert room >= 0 and held + room <= max(limit, held)
    if held < concurrency:
        assert room > 0  # a free slot is never left idle


def test_block_times() -> None:
    assert block_ms(running=0, next_due_ms=-1, local_due_ms=0, now_ms=1000) == MAX_BLOCK_MS
    assert block_ms(running=3, next_due_ms=-1, local_due_ms=0, now_ms=1000) == BUSY_BLOCK_MS
    assert block_ms(running=0, next_due_ms=1250, local_due_ms=0, now_ms=1000) == 250
    assert block_ms(running=0, next_due_ms=5000, local_due_ms=1040, now_ms=1000) == 40
    assert block_ms(running=0, next_due_ms=900, local_due_ms=0, now_ms=1000) == 1  # overdue
