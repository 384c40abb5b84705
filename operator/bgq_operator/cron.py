"""Pure schedule maths: cron ticks in a time zone, missed ticks, the overlap decision.

No I/O, no clock: callers pass ``now`` (epoch seconds). Cron parsing is croniter's (a
maintained library, no hand-written parser); time zones are :mod:`zoneinfo` (IANA names).

Ticks are instants, named by their epoch second (the job id is ``sched:<name>:<epoch>``), so
two operators computing the same schedule get the same ids. Daylight-saving rules
(docs/operator.md, "Schedules"):

* a wall-clock time that does not exist (spring forward) fires at the first instant after the
  gap (croniter's behaviour: ``30 2 * * *`` in Europe/Berlin on 2026-03-29 fires at 03:00);
* a wall-clock time that exists twice (fall back) fires once, at its first occurrence: the
  second, repeated one (``fold=1``) is skipped, so a daily job never runs twice on that day.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

__all__ = [
    "InvalidScheduleError",
    "Overlap",
    "OverlapAction",
    "Schedule",
    "due_ticks",
    "next_tick",
    "overlap_action",
    "validate_cron",
    "validate_zone",
]

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# Searching for a tick further away than this means the expression never fires in practice.
_HORIZON_S = 5 * 366 * 86400
GRACE_S = 60.0
"""A tick fired at most this late is on time (not subject to catchUp)."""
MISSED_CAP = 10000
"""Missed ticks older than the catch-up window are counted up to this many."""


class InvalidScheduleError(ValueError):
    """A cron expression or time zone that cannot be used; the message says why."""


class Overlap(enum.StrEnum):
    """What to do at a tick while the previous tick's job is not final."""

    ALLOW = "Allow"
    SKIP = "Skip"
    REPLACE = "Replace"


class OverlapAction(enum.StrEnum):
    """The decision for one tick."""

    FIRE = "fire"
    SKIP = "skip"
    REPLACE = "replace"
    """Cancel the previous tick's job, then fire."""


@lru_cache(maxsize=256)
def validate_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; raises :class:`InvalidScheduleError` if it does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidScheduleError(
            f"time zone {name!r} does not exist (use an IANA name such as Europe/Berlin or UTC)"
        ) from exc


def validate_cron(expr: str, zone: str = "UTC", now: float | None = None) -> None:
    """Raise :class:`InvalidScheduleError` unless ``expr`` is a 5-field cron or macro that fires.

    ``now`` (default: 2026-01-01T00:00Z) anchors the "does it ever fire" search; a
    rule like ``0 0 30 2 *`` (30 February) is rejected.
    """
    text = expr.strip()
    fields = text.split()
    if not (len(fields) == 5 or (len(fields) == 1 and text.lower() in MACROS)):
        raise InvalidScheduleError(
            f"cron {expr!r} must have 5 fields (minute hour day-of-month month day-of-week) "
            f"or be one of {', '.join(MACROS)}"
        )
    if not croniter.is_valid(text):
        raise InvalidScheduleError(f"cron {expr!r} is not a valid cron expression")
    start = 1767225600.0 if now is None else now
    if next_tick(text, zone, start) is None:
        raise InvalidScheduleError(f"cron {expr!r} never fires (no tick within 5 years)")


def _iter(expr: str, zone: str, after: float) -> croniter:
    tz = validate_zone(zone)
    try:
        return croniter(expr, datetime.fromtimestamp(after, tz))
    except (CroniterBadCronError, CroniterError) as exc:
        raise InvalidScheduleError(f"cron {expr!r} is not valid: {exc}") from exc


def _repeated(dt: datetime) -> bool:
    """The second occurrence of a wall-clock time that a fall-back transition repeats."""
    return dt.fold == 1 and dt.utcoffset() != dt.replace(fold=0).utcoffset()


def _ticks(expr: str, zone: str, after: float, until: float, cap: int = 100000) -> list[float]:
    """Tick instants in ``(after, until]``, ascending, DST rules applied (at most ``cap``)."""
    out: list[float] = []
    it = _iter(expr, zone, after)
    while len(out) < cap:
        try:
            dt = it.get_next(datetime)
        except CroniterBadDateError:
            return out
        t = dt.timestamp()
        if t > until:
            return out
        if t > after and not _repeated(dt):
            out.append(t)
    return out


def next_tick(expr: str, zone: str, after: float) -> float | None:
    """The first tick strictly after ``after`` (epoch seconds), or None if it never fires."""
    it = _iter(expr, zone, after)
    for _ in range(100000):
        try:
            dt = it.get_next(datetime)
        except CroniterBadDateError:
            return None
        t = dt.timestamp()
        if t - after > _HORIZON_S:
            return None
        if t > after and not _repeated(dt):
            return t
    return None


@dataclass(frozen=True, slots=True)
class Schedule:
    """What the tick maths needs of one ``spec.schedules[]`` entry."""

    cron: str
    zone: str = "UTC"
    max_ticks: int = 1
    window_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class DueTicks:
    """Ticks to fire now (oldest first) and how many were missed beyond the catch-up limits."""

    fire: tuple[float, ...]
    missed: int
    next: float | None
    """The first tick after ``now`` (for status and pre-warm)."""


def due_ticks(schedule: Schedule, last: float | None, now: float) -> DueTicks:
    """Which ticks to fire at ``now``, given the last tick already handled (``last``).

    Ticks in ``(last, now]`` are due. The newest one fires if it is at most :data:`GRACE_S`
    old (on time: the firing loop runs about every second). Older ones are late (an operator
    or Redis outage): of those at most ``window_s`` old, the newest ``max_ticks`` fire, oldest
    first; the rest count as ``missed`` (ticks older than the window up to :data:`MISSED_CAP`).
    ``last=None`` (a new schedule, or its Redis record lost) fires nothing from the past.
    """
    upcoming = next_tick(schedule.cron, schedule.zone, now)
    if last is None or last >= now:
        return DueTicks((), 0, upcoming)
    # bound the search: ticks older than the window (or the grace) are missed whatever they are
    horizon = max(last, now - max(schedule.window_s, GRACE_S))
    ticks = _ticks(schedule.cron, schedule.zone, horizon, now)
    older = (
        len(_ticks(schedule.cron, schedule.zone, last, horizon, MISSED_CAP))
        if horizon > last
        else 0
    )
    on_time: list[float] = []
    if ticks and now - ticks[-1] <= GRACE_S:
        on_time = [ticks.pop()]
    late = [t for t in ticks if now - t <= schedule.window_s]
    keep = late[-schedule.max_ticks :] if schedule.max_ticks > 0 else []
    missed = older + len(ticks) - len(keep)
    return DueTicks((*keep, *on_time), missed, upcoming)


def overlap_action(policy: Overlap | str, previous_final: bool | None) -> OverlapAction:
    """The decision at a tick: ``previous_final`` is None when there is no previous job."""
    if previous_final is None or previous_final or Overlap(policy) is Overlap.ALLOW:
        return OverlapAction.FIRE
    if Overlap(policy) is Overlap.SKIP:
        return OverlapAction.SKIP
    return OverlapAction.REPLACE


def tick_job_id(name: str, tick: float) -> str:
    """The job id of a schedule's tick: ``sched:<name>:<epoch seconds>``."""
    return f"sched:{name}:{int(tick)}"


def rfc3339_at(t: float) -> str:
    """An epoch time as RFC 3339 UTC (status fields)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
