"""Status conditions in the standard ``metav1.Condition`` shape.

Pure functions over plain lists of dicts (what ``status.conditions`` holds). The rule that makes
conditions trustworthy: ``lastTransitionTime`` changes only when ``status`` changes, so "Ready
since 10:02" stays true while the reason or message are refreshed. ``observedGeneration`` says
which spec the condition was computed from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

READY = "Ready"
REDIS_REACHABLE = "RedisReachable"
SCALING = "Scaling"
DEGRADED = "Degraded"
ORDER = (READY, REDIS_REACHABLE, SCALING, DEGRADED)

Status = Literal["True", "False", "Unknown"]


def rfc3339(when: datetime | None = None) -> str:
    """A Kubernetes timestamp (seconds precision, UTC, ``Z`` suffix)."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: Iterable[Mapping[str, Any]] | None, kind: str) -> dict[str, Any] | None:
    """The condition of type ``kind``, or None."""
    for cond in conditions or ():
        if cond.get("type") == kind:
            return dict(cond)
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, kind: str) -> bool:
    """Whether condition ``kind`` exists with status "True"."""
    cond = find(conditions, kind)
    return cond is not None and cond.get("status") == "True"


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None,
    kind: str,
    status: Status,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """A new conditions list with ``kind`` set; other conditions are kept as they are.

    ``lastTransitionTime`` is carried over unless ``status`` changed (or the condition is new).
    The result is sorted in a fixed order (Ready, RedisReachable, Scaling, Degraded, then
    others by type) so equal states compare equal and patches stay minimal.
    """
    old = find(conditions, kind)
    if old is not None and old.get("status") == status and old.get("lastTransitionTime"):
        transition = str(old["lastTransitionTime"])
    else:
        transition = rfc3339(now)
    new: dict[str, Any] = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        new["observedGeneration"] = generation
    others = [dict(c) for c in conditions or () if c.get("type") != kind]
    return _sorted([*others, new])


def _sorted(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(cond: Mapping[str, Any]) -> tuple[int, str]:
        kind = str(cond.get("type"))
        return (ORDER.index(kind) if kind in ORDER else len(ORDER), kind)

    return sorted(conditions, key=key)


def transitions(
    before: Iterable[Mapping[str, Any]] | None, after: Iterable[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """Conditions of ``after`` whose status or reason differ from ``before`` (worth an event)."""
    changed = []
    for cond in after or ():
        old = find(before, str(cond.get("type")))
        if old is None or (old.get("status"), old.get("reason")) != (
            cond.get("status"),
            cond.get("reason"),
        ):
            changed.append(dict(cond))
    return changed
