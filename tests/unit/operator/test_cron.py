"""Tick maths of bgq_operator.cron: next ticks, DST transitions, catch-up, overlap (tables)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bgq_operator.cron import (
    MISSED_CAP,
    InvalidScheduleError,
    OverlapAction,
    Schedule,
    due_ticks,
    next_tick,
    overlap_action,
    tick_job_id,
    validate_cron,
    validate_zone,
)

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def at(zone: str, year: int, month: int, day: int, hour: int, minute: int) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


def local(zone: str, t: float) -> str:
    return datetime.fromtimestamp(t, ZoneInfo(zone)).isoformat()


@pytest.mark.parametrize(
    ("cron", "zone", "after", "expected"),
    [
        # plain UTC
        ("*/15 * * * *", "UTC", at("UTC", 2026, 1, 1, 0, 7), "2026-01-01T00:15:00+00:00"),
        ("@hourly", "UTC", at("UTC", 2026, 1, 1, 0, 0), "2026-01-01T01:00:00+00:00"),
        ("@daily", "UTC", at("UTC", 2026, 1, 1, 0, 0), "2026-01-02T00:00:00+00:00"),
        # strictly after: a tick exactly at `after` is not returned
        ("0 * * * *", "UTC", at("UTC", 2026, 1, 1, 5, 0), "2026-01-01T06:00:00+00:00"),
        # the zone matters: 09:00 Berlin (winter, +01:00)
        ("0 9 * * *", BERLIN, at("UTC", 2026, 1, 1, 0, 0), "2026-01-01T09:00:00+01:00"),
        # spring forward (Berlin 2026-03-29 02:00 -> 03:00): 02:30 does not exist, fires 03:00
        ("30 2 * * *", BERLIN, at(BERLIN, 2026, 3, 29, 1, 0), "2026-03-29T03:00:00+02:00"),
        # ... and the next day it is 02:30 again
        ("30 2 * * *", BERLIN, at(BERLIN, 2026, 3, 29, 3, 0), "2026-03-30T02:30:00+02:00"),
        # fall back (Berlin 2026-10-25 03:00 -> 02:00): 02:30 exists twice, fires once (first)
        ("30 2 * * *", BERLIN, at(BERLIN, 2026, 10, 25, 1, 0), "2026-10-25T02:30:00+02:00"),
        ("30 2 * * *", BERLIN, at(BERLIN, 2026, 10, 25, 2, 30), "2026-10-26T02:30:00+01:00"),
        # New York spring forward 2026-03-08 02:00 -> 03:00
        ("15 2 * * *", NEW_YORK, at(NEW_YORK, 2026, 3, 8, 0, 0), "2026-03-08T03:00:00-04:00"),
        # a time outside the transition is unaffected
        ("0 12 * * *", NEW_YORK, at(NEW_YORK, 2026, 3, 8, 0, 0), "2026-03-08T12:00:00-04:00"),
    ],
)
def test_next_tick(cron: str, zone: str, after: float, expected: str) -> None:
    t = next_tick(cron, zone, after)
    assert t is not None
    assert local(zone, t) == expected


def test_fall_back_day_daily_job_fires_once() -> None:
    start = at(BERLIN, 2026, 10, 24, 12, 0)
    end = at(BERLIN, 2026, 10, 26, 12, 0)
    sched = Schedule("30 2 * * *", BERLIN, max_ticks=100, window_s=end - start)
    ticks = due_ticks(sched, start, end).fire
    assert [local(BERLIN, t) for t in ticks] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]


def test_fall_back_hourly_distinct_ids() -> None:
    start = at(BERLIN, 2026, 10, 25, 0, 30)
    end = at(BERLIN, 2026, 10, 25, 4, 30)
    sched = Schedule("0 * * * *", BERLIN, max_ticks=100, window_s=end - start)
    ticks = due_ticks(sched, start, end).fire
    # 01:00+02, 02:00+02 (the repeated 02:00+01 is skipped), 03:00+01, 04:00+01
    assert [local(BERLIN, t) for t in ticks] == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T04:00:00+01:00",
    ]
    ids = [tick_job_id("h", t) for t in ticks]
    assert len(set(ids)) == 4
    assert ids[0] == f"sched:h:{int(ticks[0])}"


@pytest.mark.parametrize(
    ("last_min", "now_min", "max_ticks", "window_min", "fire_min", "missed"),
    [
        (None, 30, 1, 60, [], 0),  # new schedule: nothing from the past
        (0, 0, 1, 60, [], 0),  # nothing new
        (0, 4, 1, 60, [], 0),  # next tick at 5 not yet
        (0, 5, 1, 60, [5], 0),  # exactly at the tick
        (0, 12, 1, 60, [10], 1),  # outage over 5 and 10: newest fired, one missed
        (0, 12, 5, 60, [5, 10], 0),  # enough catch-up: both fired, oldest first
        (0, 30, 5, 12, [20, 25, 30], 3),  # only ticks within 12 min: 20, 25, 30; 5-15 missed
        (0, 30, 0, 60, [30], 5),  # maxTicks 0: nothing late, the on-time tick still fires
        (0, 30, 2, 0, [30], 5),  # window 0: likewise
        (29, 31, 1, 0, [], 1),  # tick 30 is 61 s late: too late for a window of 0
        (29, 31, 1, 120, [30], 0),  # ... but within a 2 min window
    ],
)
def test_due_ticks(
    last_min: int | None,
    now_min: int,
    max_ticks: int,
    window_min: int,
    fire_min: list[int],
    missed: int,
) -> None:
    base = at("UTC", 2026, 1, 1, 0, 0)
    sched = Schedule("*/5 * * * *", "UTC", max_ticks=max_ticks, window_s=window_min * 60)
    last = None if last_min is None else base + last_min * 60
    due = due_ticks(
        sched, last, base + now_min * 60 + (1 if (last_min, now_min) == (29, 31) else 0)
    )
    assert [round((t - base) / 60) for t in due.fire] == fire_min
    assert due.missed == missed
    assert due.next is not None and due.next > base + now_min * 60


def test_missed_count_is_capped() -> None:
    base = at("UTC", 2026, 1, 1, 0, 0)
    sched = Schedule("* * * * *", "UTC", max_ticks=1, window_s=60)
    due = due_ticks(sched, base, base + 30 * 86400)
    assert due.fire == (base + 30 * 86400,)
    assert due.missed == MISSED_CAP + 0  # older ticks counted up to the cap


@pytest.mark.parametrize(
    ("policy", "previous_final", "action"),
    [
        ("Allow", None, OverlapAction.FIRE),
        ("Allow", False, OverlapAction.FIRE),
        ("Skip", None, OverlapAction.FIRE),
        ("Skip", True, OverlapAction.FIRE),
        ("Skip", False, OverlapAction.SKIP),
        ("Replace", True, OverlapAction.FIRE),
        ("Replace", False, OverlapAction.REPLACE),
    ],
)
def test_overlap(policy: str, previous_final: bool | None, action: OverlapAction) -> None:
    assert overlap_action(policy, previous_final) is action


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 0 30 2 *", "never fires"),
        ("61 * * * *", "not a valid"),
        ("* * * *", "5 fields"),
        ("* * * * * *", "5 fields"),
        ("@every5m", "5 fields"),
    ],
)
def test_bad_cron(cron: str, message: str) -> None:
    with pytest.raises(InvalidScheduleError, match=message):
        validate_cron(cron)


def test_bad_zone() -> None:
    with pytest.raises(InvalidScheduleError, match="does not exist"):
        validate_zone("Mars/Olympus")
    assert str(validate_zone("Europe/Berlin")) == "Europe/Berlin"
