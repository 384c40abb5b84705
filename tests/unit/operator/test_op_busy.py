"""The busy-pod count the autoscaler feeds into each decision."""

from __future__ import annotations

import pytest

from bgq.stats import WorkerHeartbeat
from bgq_operator.autoscaler import busy_pods


def beat(pod: str, state: str, in_flight: int, pid: int = 1) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        consumer=f"{pod}:{pid}", pod=pod, pid=pid, state=state, in_flight=in_flight,
        oldest_started_ms=1 if in_flight else 0, heartbeat_ms=1, concurrency=10, version="0",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("beats", "busy"),
    [
        ([], 0),
        ([beat("a", "idle", 0), beat("b", "idle", 0)], 0),
        ([beat("a", "busy", 2), beat("b", "idle", 0)], 1),
        # two worker processes in one pod count once
        ([beat("a", "busy", 1, pid=1), beat("a", "idle", 0, pid=2)], 1),
        # fetched-but-not-started jobs still make the pod busy
        ([beat("a", "idle", 3)], 1),
        # a draining pod is being deleted: not a replica any more, whatever it still runs
        ([beat("a", "draining", 2), beat("b", "busy", 1)], 1),
        ([beat("a", "draining", 1, pid=1), beat("a", "busy", 1, pid=2)], 0),
    ],
)
def test_busy_pods(beats: list[WorkerHeartbeat], busy: int) -> None:
    assert busy_pods(beats) == busy
