# GENERATED from bgq/_async/listing.py by hack/gen-sync-client: edit the source, not this.
"""Job listing's I/O, asyncio flavour: the SOURCE of ``bgq._sync.listing`` (see bgq.listing)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bgq._client_core import SyncRedis
from bgq._listing_core import (
    _BATCH,
    _SOURCES,
    Batch,
    JobPage,
    JobSummary,
    _delayed_cursor,
    _parse_cursor,
    _states,
    _task,
)
from bgq.errors import ConfigError
from bgq.protocol import QueueName
from bgq.scripts import SCRIPTS


def list_jobs(
    r: SyncRedis,
    queue: QueueName,
    *,
    states: Iterable[str] | None = None,
    task: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> JobPage:
    """A page of at most ``limit`` jobs in ``states`` (default: every listable state)."""
    if not 1 <= limit <= 10000:
        raise ConfigError(f"limit must be between 1 and 10000, got {limit}")
    wanted = _states(states)
    keys = queue.keys
    budget = 10 * limit + 1000  # entries examined per call, at most
    found: list[JobSummary] = []
    start, pos = _parse_cursor(cursor)
    for index in range(start, len(_SOURCES)):
        source, holds = _SOURCES[index]
        if index != start:
            pos = ""
        if not set(holds) & set(wanted):
            continue
        while True:
            batch, exhausted = _read(r, keys, source, pos)
            for item_pos, item in batch:
                budget -= 1
                pos = item_pos
                if item is not None and item.state in wanted and task in (None, item.task):
                    found.append(item)
                if len(found) >= limit or budget <= 0:
                    return JobPage(found, f"{source}:{pos}")
            if exhausted:
                break
    return JobPage(found, None)


def _read(r: SyncRedis, keys: Any, source: str, pos: str) -> tuple[Batch, bool]:
    """One batch of ``source`` after ``pos``: (position, summary or None) per entry, and
    whether the source is exhausted."""
    if source.startswith("r"):
        band = int(source[1])
        after = f"({pos}" if pos else "-"
        entries: Any = r.xrange(keys.ready[band], after, "+", count=_BATCH)
        ids = [(str(e), str(f.get("id", ""))) for e, f in entries]
        summaries = _hashes(r, keys, [i for _, i in ids])
        return [(e, s) for (e, _), s in zip(ids, summaries, strict=True)], len(ids) < _BATCH
    if source == "d":
        score, member = _delayed_cursor(pos)
        flat: Any = SCRIPTS.delayed_page.run(r, [keys.delayed], [score, member, _BATCH])
        members = [(str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat), 2)]
        summaries = _hashes(r, keys, [m for m, _ in members])
        out: Batch = []
        for (m, sc), s in zip(members, summaries, strict=True):
            item = None
            if s is not None:
                item = JobSummary(
                    s.id, s.state, s.task, s.attempt, s.band, s.enqueued_ms, int(float(sc))
                )
            out.append((f"{sc}:{m}", item))
        return out, len(members) < _BATCH
    letters: Any = r.xrange(keys.dead, f"({pos}" if pos else "-", "+", count=_BATCH)
    batch: Batch = [
        (str(e), JobSummary(
            id=str(f.get("id", "")), state="dead", task=_task(f.get("env")), attempt=0, band=-1,
            enqueued_ms=0, reason=str(f.get("reason", "")),
        ))
        for e, f in letters
    ]  # fmt: skip
    return batch, len(letters) < _BATCH


def _hashes(r: SyncRedis, keys: Any, ids: list[str]) -> list[JobSummary | None]:
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), "state", "env", "attempt", "band", "enqueued_ms")
    out: list[JobSummary | None] = []
    for job_id, h in zip(ids, pipe.execute(), strict=True):
        if not h or h[0] is None:
            out.append(None)
            continue
        out.append(
            JobSummary(
                id=job_id,
                state=str(h[0]),
                task=_task(h[1]),
                attempt=int(h[2] or 1),
                band=int(h[3] or 1),
                enqueued_ms=int(h[4] or 0),
            )
        )
    return out


__all__ = ["list_jobs"]
