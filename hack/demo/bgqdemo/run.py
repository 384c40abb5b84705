"""The demo's scenarios on an installed stack: enqueue from inside the cluster, watch, measure.

``burst``: a burst of mixed jobs (0.1-5 s sleeps, some fail once and are retried, some CPU-bound)
from a pod, half through the Python client and half through the HTTP gateway; the queue scales
from zero in one step and back to zero when idle.

``drain``: long jobs (12-20 s); while they run, maxReplicas is lowered (the operator removes only
idle pods, so the busy ones stay until their jobs are done) and the worker template changes (a
rolling update: every old pod gets SIGTERM with jobs in flight and drains them). The summary
shows from the tasks' own records that no run was cut short and no job was lost.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from rich.console import Console
from tests.e2e.kube import Cluster, Portal, free_port

from bgqdemo.stack import QUEUE, RELEASE, DemoError, apply_queue, queue_manifest, service_ip
from bgqdemo.summary import JobRecord, Sample, Summary, summarize
from bgqdemo.watch import Sampler, make_view

RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class Plan:
    """How big a run is."""

    scenario: str
    count: int
    timeout: float
    max_replicas: int


def plan_for(scenario: str, short: bool) -> Plan:
    if scenario == "drain":
        return Plan("drain", 24, 300, 6)
    if short:
        return Plan("burst", 40, 240, 3)
    return Plan("burst", 200, 600, 6)


def producer_pod(namespace: str, run: str, image: str, count: int, scenario: str) -> dict[str, Any]:
    """A pod that runs examples/demo/burst.py from the tasks image, like an in-cluster service."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"burst-{run}", "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "bgq-demo",
                                "app.kubernetes.io/component": "producer"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "burst",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["python3", "-m", "burst", "--queue", f"{namespace}/{QUEUE}",
                            "--run", run, "--count", str(count), "--scenario", scenario,
                            "--gateway", f"http://{RELEASE}-gateway:8000"],
                "env": [{"name": "BGQ_REDIS_URL", "value": f"redis://{RELEASE}-redis:6379/0"}],
                "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}},
                "securityContext": RESTRICTED,
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def record_keys(namespace: str) -> list[str]:
    prefix = f"bgq-demo:{{{namespace}/{QUEUE}}}:"
    return [prefix + k for k in ("starts", "ends", "waited_ms", "drained")]


def job_records(r: redis.Redis, namespace: str, ids: list[str]) -> list[JobRecord]:
    """Each job's hash fields and the runs its task recorded."""
    starts, ends, waited, drained = record_keys(namespace)
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(f"bgq:{{{namespace}/{QUEUE}}}:job:{job_id}", "state", "attempt", "expiries",
                   "enqueued_ms", "finished_ms")
    for key in (starts, ends, waited, drained):
        pipe.hmget(key, ids)
    replies = pipe.execute()
    hashes, recs = replies[: len(ids)], replies[len(ids):]

    def num(v: Any) -> int:
        return int(v) if v not in (None, "", b"") else 0

    out = []
    for i, job_id in enumerate(ids):
        state, attempt, expiries, enq, fin = (
            (v.decode() if isinstance(v, bytes) else v) for v in hashes[i])
        out.append(JobRecord(
            id=job_id, state=state or "", attempt=num(attempt), lease_expiries=num(expiries),
            enqueued_ms=num(enq), finished_ms=num(fin), starts=num(recs[0][i]),
            ends=num(recs[1][i]),
            waited_ms=num(recs[2][i]) if recs[2][i] is not None else None,
            drained=num(recs[3][i])))
    return out


@dataclass
class DrainScript:
    """The drain scenario's interventions, each done once when its moment comes."""

    cluster: Cluster
    namespace: str
    max_replicas: int
    events: list[str] = field(default_factory=list)
    scaled_down_at: float | None = None
    rolled_at: float | None = None

    def step(self, s: Sample, t0: float, note: Callable[[str], None]) -> None:
        full = s.total and s.backlog == 0 and s.in_flight >= s.total and s.pods >= self.max_replicas
        if self.scaled_down_at is None and full:
            lower = max(1, self.max_replicas // 2)
            self.cluster.kubectl("patch", "backgroundqueue", QUEUE, "-n", self.namespace,
                                 "--type", "merge",
                                 "-p", json.dumps({"spec": {"scaling": {"maxReplicas": lower}}}))
            self.scaled_down_at = s.t
            self._say(note, f"scale-down: maxReplicas {self.max_replicas} -> {lower} while "
                      f"{s.in_flight} jobs are in flight (the operator removes only idle pods)",
                      s.t - t0)
        elif self.scaled_down_at and self.rolled_at is None and s.t - self.scaled_down_at > 3:
            patch = [{"op": "add", "path": "/spec/worker/env",
                      "value": [{"name": "DEMO_REVISION", "value": secrets.token_hex(3)}]}]
            self.cluster.kubectl("patch", "backgroundqueue", QUEUE, "-n", self.namespace,
                                 "--type", "json", "-p", json.dumps(patch))
            self.rolled_at = s.t
            self._say(note, f"rolling update: new worker template while {s.in_flight} jobs "
                      "run (old pods get SIGTERM and drain)", s.t - t0)

    def _say(self, note: Callable[[str], None], text: str, at: float) -> None:
        self.events.append(f"t+{at:.1f}s {text}")
        note(text)


def run_scenario(console: Console, cluster: Cluster, namespace: str, tasks_image: str, *,
                 scenario: str, short: bool, plain: bool) -> Summary:
    plan = plan_for(scenario, short)
    queue = queue_manifest(namespace, tasks_image, short, scenario)
    queue["spec"]["scaling"]["maxReplicas"] = plan.max_replicas
    apply_queue(cluster, namespace, queue)
    # the trial Redis's ClusterIP, through a loopback portal into the cluster's network
    # namespace (kube-proxy's rules there route it, as for a pod)
    port = free_port()
    portal = Portal(cluster.netns_path,
                    [(port, service_ip(cluster, namespace, f"{RELEASE}-redis"), 6379)]).start()
    try:
        sampler = Sampler(cluster, namespace, QUEUE, f"redis://127.0.0.1:{port}/0")
        try:
            return _run(console, cluster, namespace, tasks_image, plan=plan, sampler=sampler,
                        plain=plain)
        finally:
            sampler.close()
    finally:
        portal.stop()


def _run(console: Console, cluster: Cluster, namespace: str, tasks_image: str, *, plan: Plan,
         sampler: Sampler, plain: bool) -> Summary:
    sampler.redis.delete(*record_keys(namespace))
    run = f"r{secrets.token_hex(3)}"
    pod = producer_pod(namespace, run, tasks_image, plan.count, plan.scenario)
    cluster.apply(pod)
    title = (f"bgq demo · queue {namespace}/{QUEUE} · {plan.scenario}: {plan.count} jobs "
             f"enqueued from pod {pod['metadata']['name']} (Python client + HTTP gateway)")
    samples: list[Sample] = []
    produced: dict[str, Any] | None = None
    drain = DrainScript(cluster, namespace, plan.max_replicas) if plan.scenario == "drain" else None
    t0 = time.time()
    deadline = time.monotonic() + plan.timeout
    notes: list[str] = []
    with make_view(console, title, plain) as view:
        while True:
            if produced is None:
                produced = _producer_result(cluster, namespace, pod["metadata"]["name"])
                if produced is not None:
                    sampler.ids = list(produced["ids"])
                    notes.append(f"enqueued {len(sampler.ids)} jobs: {produced['via_client']} "
                                 f"via the Python client, {produced['via_gateway']} via the "
                                 f"HTTP gateway, in {produced['seconds']:.2f} s")
            s = sampler.sample()
            samples.append(s)
            if drain is not None:
                drain.step(s, t0, notes.append)
            view.update(samples, notes.pop(0) if notes else "")
            if produced is not None and s.done >= s.total and s.pods == 0 and s.replicas == 0:
                break
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the run did not finish within {plan.timeout:.0f} s: {s}\n"
                    f"look at: kubectl get bgq,pods -n {namespace}; kubectl describe bgq {QUEUE}")
            time.sleep(max(0.0, 1.0 - (time.time() - s.t)))
    assert produced is not None
    cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", namespace, "--wait=false",
                    check=False)
    jobs = job_records(sampler.redis, namespace, sampler.ids)
    started = min((j.enqueued_ms for j in jobs if j.enqueued_ms), default=int(t0 * 1000)) / 1000
    extra: dict[str, Any] = {"run": run, "namespace": namespace}
    if drain is not None:
        extra.update({"events": drain.events,
                      "pods_drained_while_busy": len(sampler.draining_busy)})
    return summarize(plan.scenario, jobs, samples, via_client=produced["via_client"],
                     via_gateway=produced["via_gateway"], started_at=started, extra=extra)


def _producer_result(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The producer pod's JSON line once it succeeded; raises if it failed."""
    pod = cluster.get_json("pod", name, "-n", namespace)
    phase = pod.get("status", {}).get("phase")
    if phase == "Failed":
        raise DemoError(f"the producer pod failed:\n{cluster.logs(namespace, name)[-3000:]}")
    if phase != "Succeeded":
        return None
    logs = cluster.logs(namespace, name).strip().splitlines()
    result: dict[str, Any] = json.loads(logs[-1])
    return result
