"""Pure parts of job listing (records, cursors, sources); the I/O is bgq._async.listing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bgq.errors import ConfigError

LISTABLE = ("queued", "running", "scheduled", "retrying", "dead")
_LIVE = ("queued", "running")
_SOURCES = (
    ("r0", _LIVE), ("r1", _LIVE), ("r2", _LIVE), ("d", ("scheduled", "retrying")), ("x", ("dead",)),
)  # fmt: skip
_BATCH = 200
_SCORE = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?(e[+-]?[0-9]{1,3})?")
"""A score as Redis prints it (what a delayed-set cursor carries)."""


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One listed job."""

    id: str
    state: str
    task: str
    attempt: int
    band: int
    enqueued_ms: int
    due_ms: int = 0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``bgq jobs list --json``)."""
        return {
            "id": self.id, "state": self.state, "task": self.task, "attempt": self.attempt,
            "band": self.band, "enqueued_ms": self.enqueued_ms, "due_ms": self.due_ms,
            "reason": self.reason,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class JobPage:
    """A page of jobs and the cursor of the next page (None: no more)."""

    jobs: list[JobSummary] = field(default_factory=list)
    cursor: str | None = None


def _states(states: Iterable[str] | None) -> tuple[str, ...]:
    wanted = tuple(states or LISTABLE)
    bad = [s for s in wanted if s not in LISTABLE]
    if bad:
        raise ConfigError(
            f"cannot list state(s) {', '.join(bad)}: listable states are {', '.join(LISTABLE)} "
            "(final succeeded/cancelled jobs are not indexed; look them up by id)"
        )
    return wanted


def _parse_cursor(cursor: str | None) -> tuple[int, str]:
    if not cursor:
        return 0, ""
    source, _, pos = cursor.partition(":")
    names = [s for s, _ in _SOURCES]
    if source not in names:
        raise ConfigError(f"invalid cursor {cursor!r}: use the cursor a previous page returned")
    return names.index(source), pos


def _delayed_cursor(pos: str) -> tuple[str, str]:
    """``(score, member)`` of a delayed-set position ``"<score>:<member>"`` ("" = the start).

    The position is the last listed entry, not an offset: jobs added or removed before it
    while paging do not shift the next page (bgq/lua/delayed_page.lua).
    """
    if not pos:
        return "", ""
    score, sep, member = pos.partition(":")
    if not (sep and member and _SCORE.fullmatch(score)):
        raise ConfigError(f"invalid cursor 'd:{pos}': use the cursor a previous page returned")
    return score, member


def _task(env: str | None) -> str:
    try:
        return str(json.loads(env or "{}").get("task", ""))
    except (ValueError, AttributeError):
        return ""


Batch = list[tuple[str, "JobSummary | None"]]


__all__ = ["LISTABLE", "Batch", "JobPage", "JobSummary"]
