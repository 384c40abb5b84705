"""An operator restart interrupts no running job and loses no scaling decision (real cluster).

The operator runs on the host (``python -m bgq_operator --namespace <test ns>``, as in
``test_operator.py``); the tests kill it (SIGKILL: a crash, an OOM kill, a node loss; SIGTERM: a
rollout of the operator's own Deployment) while worker pods run jobs, start a new process, and
check from three independent sources that nothing was lost or interrupted:

* the job records in Redis (state, ``attempt``, delivery ``token``, lease ``expiries``, owner,
  start time: a job moved to another pod, re-delivered or restarted shows up there);
* a ``kubectl get --watch`` on the worker Deployment (every stored ``spec.replicas``, timestamped,
  see ``test_autoscale.ReplicaWatch``), so the whole replica history is asserted, not a sample;
* a ``kubectl get --watch`` on the worker pods, recording every pod that was ever marked for
  deletion (a busy pod must never be).

Worker pods run with ``BGQ_PREFETCH=0`` so a pod holds only the jobs it runs: which pods are busy
is then exactly the set of owners of the running jobs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from tests.e2e.kube import Cluster, HostRedis
from tests.e2e.test_autoscale import (
    SELECTOR,
    ReplicaWatch,
    crd,  # noqa: F401 - fixture: the CRD applied once per module
    interrupted_metric,
    queue_manifest,
)
from tests.e2e.test_operator import OperatorProcess

import bgq
from bgq.protocol import QueueName

SCALE_DOWN_DELAY_S = 5
"""Long enough that idle pods are still there when the first operator is killed right after the
short jobs finish (the scale-down would come this long after demand dropped); zero comes
max(delay, idle) after the last job either way, so it costs no test time."""
IDLE_BEFORE_ZERO_S = 5
OPERATOR_DOWN_S = 4.0
"""How long the queue runs without an operator (longer than the worker heartbeat interval)."""
LONG_S = 20.0

StartOperator = Callable[[], OperatorProcess]


@pytest.fixture
def operators(
    cluster: Cluster, crd: None, namespace: str, tmp_path: Path  # noqa: F811
) -> Iterator[StartOperator]:
    """Start operator processes on demand (each one a fresh ``OperatorProcess``); stop all."""
    started: list[OperatorProcess] = []

    def start() -> OperatorProcess:
        op = OperatorProcess(cluster, namespace, tmp_path / f"operator-{len(started)}.log")
        started.append(op)
        return op

    try:
        yield start
    finally:
        for i, op in enumerate(started):
            op.stop()
            tail = op.log_path.read_text(errors="replace")[-3000:]
            sys.stderr.write(f"\n--- operator #{i} (exit {op.proc.returncode}) ---\n{tail}")


@dataclass
class PodDeletions:
    """Every worker pod that got a ``deletionTimestamp``, with the time it was first seen."""

    cluster: Cluster
    namespace: str
    selector: str
    deleted: dict[str, float] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.cluster.kubectl_bin), "--kubeconfig", str(self.cluster.kubeconfig),
             "get", "pods", "-n", self.namespace, "-l", self.selector, "--watch",
             "-o", "jsonpath={.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            name, _, deleted_at = line.strip().partition(" ")
            if name and deleted_at:
                with self.lock:
                    self.deleted.setdefault(name, time.monotonic())

    def names(self, before: float = float("inf")) -> set[str]:
        """Pods marked for deletion before ``before`` (time.monotonic)."""
        with self.lock:
            return {name for name, t in self.deleted.items() if t < before}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@dataclass
class Watched:
    """A queue under test: its full name and the watches on its Deployment and pods."""

    queue: str
    replicas: ReplicaWatch
    deletions: PodDeletions


@pytest.fixture
def make_queue(
    cluster: Cluster, cluster_redis: HostRedis, worker_image: str, namespace: str
) -> Iterator[Callable[[str], Watched]]:
    """Create a scaling BackgroundQueue (an operator must be running) and watch it from zero."""
    cluster_redis.flush()
    made: list[Watched] = []

    def make(name: str) -> Watched:
        manifest = queue_manifest(
            name, worker_image, cluster_redis.url_for_pods,
            scaleDownDelaySeconds=SCALE_DOWN_DELAY_S, idleSecondsBeforeZero=IDLE_BEFORE_ZERO_S,
        )  # fmt: skip
        manifest["spec"]["worker"]["env"] = [{"name": "BGQ_PREFETCH", "value": "0"}]
        cluster.apply(manifest, namespace)
        cluster.wait_for(
            lambda: cluster.get_json("backgroundqueue", name, "-n", namespace)
            .get("status", {}).get("scaling", {}).get("boundBy"),
            30, "the first scaling decision",
        )  # fmt: skip
        deletions = PodDeletions(cluster, namespace, SELECTOR.format(name=name))
        deletions.start()
        watch = ReplicaWatch(cluster, namespace, f"bgq-{name}")
        watched = Watched(f"{namespace}/{name}", watch, deletions)
        made.append(watched)
        watch.start()
        assert watch.values() == [0]
        return watched

    try:
        yield make
    finally:
        for w in made:
            w.replicas.stop()
            w.deletions.stop()


def job_record(r: redis.Redis, queue: str, job_id: str) -> dict[str, str]:
    """The raw job hash (``owner``, ``token``, ``expiries``... that ``JobInfo`` leaves out)."""
    raw: dict[bytes, bytes] = r.hgetall(QueueName.parse(queue).keys.job(job_id))  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


def owner_pod(record: dict[str, str]) -> str:
    """The pod of a job's owner (consumer id ``<pod>:<pid>``)."""
    return record["owner"].rsplit(":", 1)[0]


def all_running(
    client: bgq.Client, r: redis.Redis, queue: str, jobs: Sequence[bgq.Job]
) -> dict[str, dict[str, str]] | None:
    """The job records when every job in ``jobs`` is running on some pod, else None."""
    records = {j.id: job_record(r, queue, j.id) for j in jobs}
    ok = all(rec.get("state") == "running" and rec.get("owner") for rec in records.values())
    return records if ok else None


def stop_operator(op: OperatorProcess, sig: signal.Signals, timeout: float) -> float:
    """Send ``sig`` to the operator, wait for it to exit; returns how long the exit took."""
    t0 = time.monotonic()
    op.proc.send_signal(sig)
    try:
        op.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the operator did not exit within {timeout}s of {sig.name}") from None
    return time.monotonic() - t0


def assert_ran_once(
    client: bgq.Client, r: redis.Redis, queue: str, job: bgq.Job, min_slept: float = 0.0
) -> dict[str, Any]:
    """The job succeeded on its first delivery, never lost its lease; returns its record."""
    result = client.wait(queue, job.id, timeout=90)
    info = client.get(queue, job.id)
    record = job_record(r, queue, job.id)
    assert info.state == bgq.JobState.SUCCEEDED, info
    assert info.attempt == 1 and info.lease_expiries == 0, info
    assert record.get("token") == "1", f"job {job.id} was delivered more than once: {record}"
    assert result["slept"] >= min_slept - 0.5, result
    return {"result": result, "info": info, "record": record}


def test_sigkill_while_long_jobs_run_interrupts_nothing(
    cluster: Cluster, cluster_redis: HostRedis, namespace: str, operators: StartOperator,
    make_queue: Callable[[str], Watched],
) -> None:  # fmt: skip
    first = operators()
    q = make_queue("restart")
    queue, watch = q.queue, q.replicas
    with bgq.Client(cluster_redis.url_for_host) as client, cluster_redis.client() as r:
        t0 = time.monotonic()
        # 3 long + 5 short = 8 jobs at 2 per pod: 0 -> 4; the long ones are first in the stream
        jobs = client.enqueue_many(
            queue, [bgq.JobSpec("sleep", (LONG_S,)) for _ in range(3)]
            + [bgq.JobSpec("sleep", (0.2,)) for _ in range(5)],
        )  # fmt: skip
        long_jobs, short_jobs = jobs[:3], jobs[3:]
        watch.wait(lambda h: h[-1][1] == 4, 10, "0 -> 4 for 8 jobs")
        for job in short_jobs:
            assert_ran_once(client, r, queue, job)
        records = cluster.wait_for(lambda: all_running(client, r, queue, long_jobs), 30,
                                   "every long job running")  # fmt: skip
        busy = {owner_pod(rec) for rec in records.values()}
        replicas_at_kill = watch.values()[-1]
        # Precondition: demand has dropped, idle pods exist that a restarted operator will
        # remove, next to the busy ones it must keep.
        assert replicas_at_kill > len(busy), (
            f"precondition: the first operator already scaled down to {watch.values()} before "
            f"the kill (busy pods {sorted(busy)}): worker pods started more than "
            f"{SCALE_DOWN_DELAY_S}s apart; nothing left for the restarted operator to decide")

        # --- the crash: no shutdown code runs, no last status write
        stop_operator(first, signal.SIGKILL, 10)
        t_kill = time.monotonic()
        time.sleep(OPERATOR_DOWN_S)  # the outage itself is the point: nothing waits on it
        second = operators()
        t_restart = time.monotonic()

        # The restarted operator scales the idle pods away while the long jobs still run, and
        # goes exactly down to the busy pods (need = ceil(3 / 2) = 2 <= busy pods).
        watch.wait(lambda h: h[-1][1] == len(busy), 20,
                   f"a scale-down to the {len(busy)} busy pods after the restart")  # fmt: skip
        t_down = time.monotonic()
        running = [client.get(queue, j.id) for j in long_jobs]
        assert not any(info.state.final for info in running), \
            "the scale-down must come while the long jobs still run"
        cluster.wait_for(lambda: set(_ready_pods(cluster, namespace, "restart")) == busy, 30,
                         f"only the busy pods {sorted(busy)} left")  # fmt: skip

        finished = [assert_ran_once(client, r, queue, j, LONG_S) for j in long_jobs]
        t_done = time.monotonic()

    hist = watch.wait(lambda h: h[-1][1] == 0, 30, "scale to zero after the long jobs")
    zero_at = hist[-1][0]
    values = [v for _, v in hist]
    # (a) every long job ran once, to the end, on the pod that held it before the crash
    for job, done in zip(long_jobs, finished, strict=True):
        before = records[job.id]
        assert done["result"]["pod"] == owner_pod(before) == owner_pod(done["record"]), done
        assert str(done["info"].started_ms) == before["started_ms"], (done, before)
    deleted_busy = busy & q.deletions.names(before=t_done)
    assert not deleted_busy, f"busy pods were deleted while running: {sorted(deleted_busy)}"
    assert q.deletions.names(before=t_done), "the idle pods should have been removed"
    assert interrupted_metric(second.url) == 0
    assert_no_rollout(cluster, namespace, "restart")
    # (b) + (d) one step up, then only down; never below the busy pods while the jobs ran,
    # never zero before they finished
    assert values[:2] == [0, 4], values
    assert values[1:] == sorted(values[1:], reverse=True), values
    during = [v for t, v in hist[1:] if t <= t_done]
    assert min(during) == len(busy), (hist, busy)
    assert all(v >= len(busy) for t, v in hist if t_kill <= t <= t_done), (hist, busy)
    # (c) zero only after the idle time
    assert values.count(0) == 2 and t_done < zero_at, (hist, t_done)
    idle_s = zero_at - t_done
    assert idle_s >= IDLE_BEFORE_ZERO_S - 1.0, f"zero {idle_s:.1f}s after the last job"
    print(f"\nSIGKILL restart: busy pods {len(busy)} of {replicas_at_kill} at the kill "
          f"({t_kill - t0:.1f}s after enqueue); operator down {t_restart - t_kill:.1f}s; "
          f"restarted operator scaled {replicas_at_kill} -> {len(busy)} "
          f"{t_down - t_restart:.1f}s after its start, {t_done - t_down:.1f}s before the long "
          f"jobs finished; zero {idle_s:.1f}s after them; history {values}")


def assert_no_rollout(cluster: Cluster, namespace: str, name: str) -> None:
    """The restart changed nothing but replicas: one ReplicaSet, no DeploymentUpdated event.

    A pod template the restarted operator builds differently would roll every worker pod (each
    one drained, its jobs handed back): the worst way a restart could interrupt jobs.
    """
    sets = cluster.get_json("replicasets", "-n", namespace, "-l", SELECTOR.format(name=name))
    assert len(sets["items"]) == 1, [rs["metadata"]["name"] for rs in sets["items"]]
    events = cluster.get_json("events", "-n", namespace, "--field-selector",
                              f"involvedObject.name={name}")  # fmt: skip
    reasons = [e.get("reason") for e in events["items"]]
    assert "DeploymentUpdated" not in reasons, reasons


def _ready_pods(cluster: Cluster, namespace: str, name: str) -> list[str]:
    """Names of the Ready, not terminating worker pods."""
    out = []
    for pod in cluster.pods(namespace, SELECTOR.format(name=name)):
        conds = pod.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
            out.append(pod["metadata"]["name"])
    return out


def test_sigterm_mid_scale_up_then_restart_ends_at_the_right_count(
    cluster: Cluster, cluster_redis: HostRedis, namespace: str, operators: StartOperator,
    make_queue: Callable[[str], Watched],
) -> None:  # fmt: skip
    first = operators()
    q = make_queue("sigterm")
    queue, watch = q.queue, q.replicas
    job_s = 6.0
    with bgq.Client(cluster_redis.url_for_host) as client, cluster_redis.client() as r:
        jobs = client.enqueue_many(queue, [bgq.JobSpec("sleep", (job_s,)) for _ in range(3)])
        watch.wait(lambda h: h[-1][1] == 2, 10, "0 -> 2 for 3 jobs")
        assert not _ready_pods(cluster, namespace, "sigterm"), "stop while pods still start"
        # graceful stop while the scale-up is under way (pods requested, none ready yet)
        exit_s = stop_operator(first, signal.SIGTERM, 15)
        assert first.proc.returncode == 0, f"SIGTERM exit code {first.proc.returncode}"
        # demand grows while no operator runs: 7 jobs need 4 pods
        jobs += client.enqueue_many(queue, [bgq.JobSpec("sleep", (job_s,)) for _ in range(4)])
        t_restart = time.monotonic()
        second = operators()
        hist = watch.wait(lambda h: h[-1][1] == 4, 20, "2 -> 4 by the restarted operator")
        up_s = hist[-1][0] - t_restart
        for job in jobs:
            assert_ran_once(client, r, queue, job, job_s)
    hist = watch.wait(lambda h: h[-1][1] == 0, 30, "scale to zero after the jobs")
    values = [v for _, v in hist]
    assert values[:3] == [0, 2, 4], values  # one step each, no overshoot, no dip
    assert values[2:] == sorted(values[2:], reverse=True), values
    assert interrupted_metric(second.url) == 0
    assert_no_rollout(cluster, namespace, "sigterm")
    print(f"\nSIGTERM restart: operator exited {exit_s:.2f}s after SIGTERM (code 0); restarted "
          f"operator scaled 2 -> 4 {up_s:.2f}s after its start; history {values}")
