"""The autoscaler's decision log in Redis: what the web console charts (docs/protocol.md, 8).

The operator appends one record per queue to the capped stream ``P:decisions`` when its
decision or the queue's figures change, and otherwise samples it sparsely (every
:data:`BUSY_SAMPLE_S` while the queue has demand or replicas, every :data:`IDLE_SAMPLE_S` while
it is idle), so an hour of a busy queue is about 720 entries and an idle queue costs one write a
minute. The stream is trimmed with ``XADD MAXLEN ~`` :data:`MAXLEN`. Alongside, the sorted set
``bgq:queues`` (member = queue name, score = ms of the last record) lists the queues an operator
decides for on this Redis, so the console finds them without ``SCAN``.

This module is pure: the record's field names, how to write and read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bgq.protocol import QueueName

QUEUES_INDEX = "bgq:queues"
"""ZSET: member = full queue name, score = ms of the queue's last decision record."""
MAXLEN = 1500
"""Approximate cap of each ``P:decisions`` stream (over an hour at one record per 5 s)."""
BUSY_SAMPLE_S = 5.0
"""An unchanged queue with demand or replicas is recorded at most this often."""
IDLE_SAMPLE_S = 60.0
"""An unchanged idle queue (no demand, no replicas) is recorded at most this often."""
REASON_MAX = 300
"""Reasons are cut to this many characters in the record."""


def decisions_key(queue: QueueName) -> str:
    """The decision STREAM of ``queue`` (in the queue's hash slot)."""
    return f"{queue.keys.prefix}:decisions"


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One entry of ``P:decisions``.

    ``demand`` is the autoscaler's demand figure (None when Redis could not be read), ``desired``
    the replicas it wants, ``replicas``/``ready`` the Deployment's, ``bound_by`` what limited the
    decision (``demand``, ``maxReplicas``, ``cooldown``, ``manual``...), ``condition`` the
    queue's Ready condition status (``True``/``False``/``Unknown``) with its reason.
    """

    ms: int
    demand: float | None
    desired: int
    replicas: int
    ready: int
    bound_by: str
    reason: str
    backlog: int = 0
    in_flight: int = 0
    due: int = 0
    dead: int = 0
    condition: str = "Unknown"
    condition_reason: str = ""

    def fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        return {
            "ms": str(self.ms),
            "demand": "" if self.demand is None else f"{self.demand:g}",
            "desired": str(self.desired),
            "replicas": str(self.replicas),
            "ready": str(self.ready),
            "bound": self.bound_by,
            "reason": self.reason[:REASON_MAX],
            "backlog": str(self.backlog),
            "in_flight": str(self.in_flight),
            "due": str(self.due),
            "dead": str(self.dead),
            "cond": self.condition,
            "cond_reason": self.condition_reason[:REASON_MAX],
        }

    def signature(self) -> tuple[Any, ...]:
        """What makes a record news (a change of any of these is written at once)."""
        return (self.demand, self.desired, self.replicas, self.ready, self.bound_by,
                self.condition, self.backlog, self.in_flight, self.due, self.dead)  # fmt: skip

    @property
    def idle(self) -> bool:
        """No demand, nothing queued or running, no replicas wanted or running."""
        return (
            not self.demand and not self.desired and not self.replicas
            and not self.backlog and not self.in_flight and not self.due
        )  # fmt: skip

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> DecisionRecord:
        """Parse a stream entry; missing or garbled numbers read as 0 (demand as None)."""

        def text(name: str) -> str:
            value = fields.get(name, "")
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

        def num(name: str) -> int:
            try:
                return int(text(name))
            except ValueError:
                return 0

        try:
            demand: float | None = float(text("demand"))
        except ValueError:
            demand = None
        return cls(
            ms=num("ms"), demand=demand, desired=num("desired"), replicas=num("replicas"),
            ready=num("ready"), bound_by=text("bound"), reason=text("reason"),
            backlog=num("backlog"), in_flight=num("in_flight"), due=num("due"), dead=num("dead"),
            condition=text("cond") or "Unknown", condition_reason=text("cond_reason"),
        )  # fmt: skip


def due(record: DecisionRecord, last: tuple[float, tuple[Any, ...]] | None, now: float) -> bool:
    """Whether ``record`` should be written, given the (time, signature) of the last one."""
    if last is None:
        return True
    at, signature = last
    if signature != record.signature():
        return True
    return now - at >= (IDLE_SAMPLE_S if record.idle else BUSY_SAMPLE_S)


__all__ = [
    "BUSY_SAMPLE_S",
    "IDLE_SAMPLE_S",
    "MAXLEN",
    "QUEUES_INDEX",
    "DecisionRecord",
    "decisions_key",
    "due",
]
