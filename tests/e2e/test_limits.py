"""Schedules, a rate limit and pause on the real cluster, in one queue (issue 10).

The operator runs on the host (the fixture of test_autoscale.py); worker pods run the project
image and reach the host's redis-server. One BackgroundQueue carries all three features, so the
schedule's first real tick (``* * * * *``: at most a minute away) fires while the rate-limit
and pause phases run, and the whole test stays around a minute:

1. 60 jobs under ``spec.limits.rate`` 4/s: real worker pods start them at the limit (token
   bucket bound checked on every window of the start times), and the autoscaler stays below
   maxReplicas with ``boundBy: rate-limit``, the figures in ``status.scaling.limit`` and a
   LimitBound event;
2. ``spec.paused: true``: pods still alive fetch nothing, the queue goes to zero with
   ``boundBy: paused``, enqueues are kept; ``paused: false`` brings pods back and the jobs run;
3. the schedule's tick: exactly one job ``sched:tick:<epoch>``, run exactly once (a ledger the
   job writes), ``status.schedules[]`` shows lastTick/lastJobId/nextTick (= lastTick + 60 s).
"""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Callable
from typing import Any

from tests.e2e.kube import Cluster, HostRedis
from tests.e2e.test_autoscale import ReplicaWatch, crd, operator, queue_manifest

import bgq

__all__ = ["crd", "operator"]  # fixtures shared with test_autoscale.py

RATE, JOBS, JOB_S = 4, 60, 0.25
MAX_REPLICAS = 6  # without the limit, 60 jobs at 2 per pod would take all 6


def epoch(rfc3339: str) -> float:
    return float(calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ")))


def poll(what: str, timeout: float, check: Callable[[], Any], every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def test_schedule_rate_limit_and_pause_on_real_pods(
    cluster: Cluster, cluster_redis: HostRedis, worker_image: str, namespace: str, operator: str
) -> None:
    t_start = time.monotonic()
    name = "limited"
    queue = f"{namespace}/{name}"
    ledger = f"e2e-ledger-{namespace}"
    manifest = queue_manifest(name, worker_image, cluster_redis.url_for_pods,
                              maxReplicas=MAX_REPLICAS)  # fmt: skip
    manifest["spec"]["limits"] = {"rate": {"jobs": RATE, "perSeconds": 1}}
    manifest["spec"]["schedules"] = [
        {"name": "tick", "cron": "* * * * *", "task": "ledger_job", "args": [ledger]}
    ]
    created = time.time()
    cluster.apply(manifest, namespace)

    def status() -> dict[str, Any]:
        got: dict[str, Any] = cluster.get_json("backgroundqueue", name, "-n", namespace)
        return dict(got.get("status") or {})

    def first_schedule() -> dict[str, Any] | None:
        sched = status().get("schedules") or []
        return sched[0] if sched and sched[0].get("nextTick") else None

    sched = poll("status.schedules[0].nextTick", 30, first_schedule)
    first_tick = epoch(sched["nextTick"])
    # the first minute boundary after the operator saw the schedule (a loaded API server may
    # take a while to deliver the object)
    assert created < first_tick <= time.time() + 60 and first_tick % 60 == 0, sched
    cluster.wait_for(
        lambda: cluster.kubectl("get", "deployment", f"bgq-{name}", "-n", namespace,
                                check=False).returncode == 0,
        30, "the worker Deployment")  # fmt: skip
    watch = ReplicaWatch(cluster, namespace, f"bgq-{name}")
    watch.start()
    assert watch.values() == [0]
    rclient = cluster_redis.client()
    try:
        with bgq.Client(cluster_redis.url_for_host) as client:
            # 1. rate limit ------------------------------------------------------------------
            jobs = client.enqueue_many(queue, [bgq.JobSpec("sleep", (JOB_S,)) for _ in range(JOBS)])
            seen_bound: list[str] = []
            limit_seen: list[dict[str, Any]] = []

            def all_done() -> bool:
                scaling = status().get("scaling") or {}
                seen_bound.append(str(scaling.get("boundBy")))
                if scaling.get("limit"):
                    limit_seen.append(scaling["limit"])
                return all(client.get(queue, j.id).state.final for j in jobs[-5:])

            poll("the rate-limited jobs", 120, all_done)  # pods start slowly on a busy node
            infos = [client.get(queue, j.id) for j in jobs]
            assert all(i.state.value == "succeeded" for i in infos), [i.state for i in infos]
            starts = sorted(i.started_ms for i in infos)
            # token bucket: RATE per second plus a full bucket (RATE) at the start, on EVERY
            # window of the observed start times (+1 for millisecond rounding)
            for a in range(len(starts)):
                for b in range(a + 1, len(starts)):
                    allowed = RATE + RATE * (starts[b] - starts[a]) / 1000 + 1
                    assert b - a + 1 <= allowed, (a, b, starts[a], starts[b])
            span_s = (starts[-1] - starts[0]) / 1000
            observed = (JOBS - RATE) / span_s  # the first RATE start at once (full bucket)
            print(f"\nrate limit {RATE}/s: {JOBS} jobs started over {span_s:.2f}s, observed "
                  f"{observed:.2f} jobs/s after the initial bucket; replicas {watch.values()}")
            assert RATE * 0.8 <= observed <= RATE * 1.05, observed
            assert "rate-limit" in seen_bound, seen_bound
            assert max(watch.values()) < MAX_REPLICAS, watch.values()
            limit = limit_seen[-1]
            assert (limit["rate"], limit["perSeconds"], limit["jobsPerSecond"]) == (RATE, 1, 4)
            assert limit["jobsPerPod"] == 2 and 1 <= limit["cap"] < MAX_REPLICAS
            events = json.loads(cluster.kubectl(
                "get", "events", "-n", namespace, "--field-selector",
                f"involvedObject.name={name},reason=LimitBound", "-o", "json").stdout)["items"]
            assert events and "spec.limits.rate" in events[0]["message"], events
            assert f"rate={RATE}" in events[0]["message"]

            # 2. pause ----------------------------------------------------------------------
            pods_before = watch.values()[-1]
            cluster.kubectl("patch", "backgroundqueue", name, "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"paused": True}}))
            poll("boundBy paused", 20,
                 lambda: (status().get("scaling") or {}).get("boundBy") == "paused")
            held = client.enqueue_many(queue, [bgq.JobSpec("sleep", (0.1,)) for _ in range(3)])
            watch.wait(lambda h: h[-1][1] == 0, 20, "paused: scale to zero")
            cond = {c["type"]: c for c in status()["conditions"]}
            assert cond["Scaling"]["reason"] == "QueuePaused", cond["Scaling"]
            # nothing was fetched while paused (pods still alive at the pause included)
            assert all(client.get(queue, j.id).state.value == "queued" for j in held)
            assert all(not client.get(queue, j.id).started_ms for j in held)
            print(f"pause: {pods_before} pod(s) -> 0, 3 jobs enqueued while paused stay queued")

            cluster.kubectl("patch", "backgroundqueue", name, "-n", namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"paused": False}}))
            watch.wait(lambda h: h[-1][1] > 0, 20, "resume: scale up")
            results = [client.wait(queue, j.id, timeout=90) for j in held]
            assert all(r["slept"] >= 0.1 for r in results)
            assert (status().get("scaling") or {}).get("boundBy") != "paused"

            # 3. the schedule's tick ---------------------------------------------------------
            tick_id = f"sched:tick:{int(first_tick)}"

            def tick_done() -> bool:
                try:
                    return client.get(queue, tick_id).state.value == "succeeded"
                except bgq.JobNotFound:
                    return False  # not fired yet

            poll(f"the tick job {tick_id}", max(60.0, first_tick - time.time() + 60), tick_done)

            def ticked() -> dict[str, Any] | None:
                s = first_schedule()
                return s if s and s.get("lastJobId") == tick_id else None

            sched = poll("status.schedules[0].lastJobId", 15, ticked)
        assert epoch(sched["lastTick"]) == first_tick
        assert sched["lastOutcome"] == "fired"
        assert epoch(sched["nextTick"]) == first_tick + 60
        assert status()["nextTick"] == sched["nextTick"]
        lines: list[Any] = list(rclient.lrange(ledger, 0, -1))
        runs = [(x.decode() if isinstance(x, bytes) else str(x)).split() for x in lines]
        tick_runs = [r for r in runs if r[0] == tick_id]
        assert len(tick_runs) == 1 and tick_runs[0][1] == "1", runs  # once, first attempt
        assert {r[0] for r in runs} <= {tick_id, f"sched:tick:{int(first_tick) + 60}"}
    finally:
        watch.stop()
        rclient.delete(ledger)
    elapsed = time.monotonic() - t_start
    print(f"schedule tick {tick_id} ran once; test took {elapsed:.1f}s")
