"""Queue control keys in Redis: pause, limits and schedule records (docs/protocol.md, 7).

They live in the queue's own slot (prefix ``P = bgq:{ns/name}``) so the fetch script reads
them atomically, and so tools in any language see the same:

* ``P:paused`` HASH: one field per pauser (``spec`` written by the operator from
  ``spec.paused``, ``cli`` by ``bgq pause``); the queue is paused while the key exists.
* ``P:limits`` STRING: the limits JSON the fetch script enforces (written by the operator
  from ``spec.limits``; absent = no limits).
* ``P:schedules`` HASH: schedule name -> JSON record (definition and last/next tick), written
  by the operator's schedule loop; read by ``bgq schedules``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bgq.client import Client
from bgq.connection import SyncRedis
from bgq.errors import BgqError
from bgq.protocol import WAKE_CHANNEL, QueueName

PAUSE_SOURCES = ("spec", "cli")


def paused_key(queue: QueueName) -> str:
    """The pause HASH of ``queue``."""
    return f"{queue.keys.prefix}:paused"


def limits_key(queue: QueueName) -> str:
    """The limits STRING of ``queue``."""
    return f"{queue.keys.prefix}:limits"


def schedules_key(queue: QueueName) -> str:
    """The schedule records HASH of ``queue``."""
    return f"{queue.keys.prefix}:schedules"


class ScheduleNotFoundError(BgqError):
    """``bgq schedules trigger`` named a schedule the queue does not have."""


def set_paused(r: SyncRedis, queue: QueueName, paused: bool, source: str = "cli") -> bool:
    """Pause or resume for ``source``; returns whether the queue is paused afterwards."""
    if source not in PAUSE_SOURCES:
        raise ValueError(f"source must be one of {PAUSE_SOURCES}, got {source!r}")
    key = paused_key(queue)
    if paused:
        r.hset(key, source, str(int(time.time() * 1000)))
    else:
        r.hdel(key, source)
    now_paused = bool(r.exists(key))
    r.publish(WAKE_CHANNEL, str(queue))  # the operator decides the queue again at once
    return now_paused


def pause_sources(r: SyncRedis, queue: QueueName) -> list[str]:
    """Who pauses the queue (empty: not paused)."""
    return sorted(str(k) for k in r.hkeys(paused_key(queue)))


def read_schedules(r: SyncRedis, queue: QueueName) -> list[dict[str, Any]]:
    """The schedule records of ``queue`` (sorted by name); unreadable records are skipped."""
    out: list[dict[str, Any]] = []
    for name, raw in sorted(r.hgetall(schedules_key(queue)).items()):
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            record["name"] = str(name)
            out.append(record)
    return out


def trigger(client: Client, queue: QueueName, name: str) -> str:
    """Fire schedule ``name`` now with its own job id ``sched:<name>:manual:<ms>``."""
    for record in read_schedules(client.redis, queue):
        if record["name"] == name:
            job_id = f"sched:{name}:manual:{int(time.time() * 1000)}"
            job = client.enqueue_with(
                queue,
                str(record.get("task")),
                args=list(record.get("args") or []),
                kwargs=dict(record.get("kwargs") or {}),
                priority=int(record.get("priority", 1)),
                job_id=job_id,
            )
            return job.id
    names = ", ".join(r["name"] for r in read_schedules(client.redis, queue)) or "none"
    raise ScheduleNotFoundError(
        f"queue {queue} has no schedule {name!r} (schedules: {names}); schedules come from "
        "spec.schedules and appear here once the operator has seen them"
    )


__all__ = [
    "PAUSE_SOURCES",
    "ScheduleNotFoundError",
    "limits_document",
    "limits_key",
    "pause_sources",
    "paused_key",
    "read_schedules",
    "schedules_key",
    "set_limits",
    "set_paused",
    "trigger",
]


def limits_document(
    rate: tuple[int, float] | None = None,
    keys: list[dict[str, Any]] | None = None,
) -> str:
    """The ``P:limits`` JSON the fetch script enforces (docs/protocol.md, section 7).

    ``rate`` is ``(jobs, per_seconds)`` for the whole queue; each of ``keys`` is
    ``{"name", "key_from" ("kwargs.<f>" or "header.<f>"), "concurrency"?, "rate"?: (jobs, s)}``.
    """
    doc: dict[str, Any] = {"v": 1}
    if rate is not None:
        doc["rate"] = {"jobs": int(rate[0]), "per_ms": float(rate[1]) * 1000}
    out = []
    for k in keys or ():
        source, _, field = str(k["key_from"]).partition(".")
        if source not in ("kwargs", "header") or not field:
            raise ValueError(
                f"key_from must be kwargs.<name> or header.<name>, got {k['key_from']!r}"
            )
        item: dict[str, Any] = {"name": k["name"], "from": source, "field": field}
        if k.get("concurrency") is not None:
            item["concurrency"] = int(k["concurrency"])
        if k.get("rate") is not None:
            jobs, per = k["rate"]
            item["rate"] = {"jobs": int(jobs), "per_ms": float(per) * 1000}
        out.append(item)
    if out:
        doc["keys"] = out
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def set_limits(r: SyncRedis, queue: QueueName, document: str | None) -> None:
    """Write (or with ``None`` remove) the limits the fetch script enforces."""
    if document is None:
        r.delete(limits_key(queue))
    else:
        r.set(limits_key(queue), document)
