"""Job progress and checkpoints with real worker processes on a real redis-server: reported
progress reaches Client.get and wait(on_progress=...), and a checkpoint saved before a SIGTERM
drain hands the job back reaches the next attempt, which resumes instead of restarting."""

from __future__ import annotations

import signal
import threading

import pytest
import redis

import bgq
from bgq.progress import Progress
from conftest import QUEUE, SpawnWorker, wait_until, worker_alive


@pytest.mark.parametrize("task", ["resumable", "resumable_cpu"])
def test_checkpoint_survives_a_sigterm_drain_and_the_next_attempt_resumes(
    spawn_worker: SpawnWorker, redis_url: str, rdb: redis.Redis, task: str
) -> None:
    """``resumable_cpu`` runs in a child process (cpu_bound): its reports cross the pipe."""
    steps = 60
    client = bgq.Client(redis_url)
    a = spawn_worker("a", BGQ_DRAIN_SECONDS=1, BGQ_LEASE_SECONDS=30)
    wait_until(lambda: worker_alive(rdb, a.name), 20, "worker a to start")
    job = client.enqueue(QUEUE, task, "rs", steps, 0.1)
    seen: list[Progress] = []
    results: list[object] = []
    waiter = threading.Thread(
        target=lambda: results.append(
            client.wait(QUEUE, job.id, timeout=90, on_progress=seen.append)
        )
    )
    waiter.start()

    # progress arrives with the lease renewals (early, at most once a second), not at the end
    def reported() -> float:
        p = client.get(QUEUE, job.id).progress
        return p.fraction if p is not None else 0.0

    wait_until(lambda: reported() >= 0.1, 20, "progress to be stored while the job runs")
    assert client.get(QUEUE, job.id).state is bgq.JobState.RUNNING
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(20) == 0
    handed_back = client.get(QUEUE, job.id)
    assert handed_back.state is bgq.JobState.QUEUED and handed_back.attempt == 1
    saved = handed_back.checkpoint
    assert isinstance(saved, dict)
    done_before = saved["done"]
    assert 0 < done_before < steps
    assert handed_back.progress is not None
    assert handed_back.progress.fraction == done_before / steps  # stored at the hand-back

    b = spawn_worker("b")
    waiter.join(90)
    assert results == [done_before]  # the second run started at the checkpoint
    assert rdb.lrange("bgqtest:rs", 0, -1) == [
        "attempt:1:from:0",
        f"attempt:1:from:{done_before}",
    ]
    final = client.get(QUEUE, job.id)
    assert final.state is bgq.JobState.SUCCEEDED
    # stored with the renewals while it ran (reports after the last one are not written on
    # success: the result is what counts then)
    assert done_before < final.checkpoint["done"] <= steps
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions, fractions  # reports, in order
    assert len(fractions) >= 2
    b.proc.terminate()
    b.proc.wait(20)
    client.close()
