"""Replay bursty job traces through bgq's autoscaler and through a model of KEDA + HPA defaults.

Usage: ``python bench/autoscale_sim.py [--seed N] [--trace NAME ...] [--dt 0.1]``

Both systems drive the same simulated cluster: a Deployment whose ReplicaSet creates pods that
become ready ``--start-delay`` seconds later (2 s), each running one worker with ``--concurrency``
slots (10) that takes jobs FIFO from the queue the moment a slot is free. Scale-in is decided by
a model of the ReplicaSet's ranking (kubernetes ``controller.ActivePodsWithRanks`` with
``LogarithmicScaleDown``): pending pods first, then not ready, then lower
``pod-deletion-cost``, then pods ready for a shorter time (log2 buckets), then random. A deleted
pod stops taking jobs and gets the Kubernetes default ``terminationGracePeriodSeconds`` (30 s;
bgq sets drainSeconds 25 + 5 = 30 too): jobs that end within it complete, the rest are
interrupted and go back to the head of the queue.

* **bgq**: ``bgq_operator.scaling.decide`` with the default policy (scaleDownDelaySeconds 30,
  idleSecondsBeforeZero 60, jobsPerPod = concurrency) on a 1 s tick (the operator wakes up on
  enqueue; 1 s bounds the detection), demand = backlog + in flight, busy pods from worker
  heartbeats; scale-down through ``bgq_operator.podcost.plan_scale_down``: deletion costs are
  patched first and replicas lowered on a later tick only when the annotations make the
  ReplicaSet remove idle pods.
* **KEDA + HPA** (defaults, Redis *list* scaler, ``listLength`` = concurrency): KEDA polls every
  30 s and only decides 0 -> 1 (activation, ``LLEN > 0``) and N -> 0 (``cooldownPeriod`` 300 s
  after the last active poll). The HPA syncs every 15 s while replicas >= 1 with an External
  AverageValue metric = ``LLEN`` (jobs already popped by workers are invisible):
  desired = ceil(LLEN / listLength) unless within 10 % tolerance, clamped to [1, max];
  scale-up limited to max(+4 pods, x2) per 15 s; scale-down to the highest recommendation of
  the last 300 s; the ReplicaSet picks victims without any idea which pods are busy.

Per trace it prints replica-seconds (pods existing x time, including starting and terminating
pods), p95 and max job wait (arrival -> first start), interrupted jobs, direction changes of the
replica count, time from the first job to the first ready pod, and the idle tail (last job
finished -> zero pods). Deterministic for a seed; runs in seconds.

The ``rate-limited`` trace puts a queue-wide limit of 20 job starts per second in front of the
pods (as ``spec.limits.rate`` does in the fetch script): bgq's decision caps replicas at
ceil(rate x observed mean run time / concurrency); KEDA keeps scaling on the backlog and its
extra pods idle behind the limit.

The ``key-limited`` trace has per-key concurrency (``spec.limits.keys[].concurrency``): one hot
tenant and two small ones, at most 8 jobs of a tenant running at once. Workers take the first
job whose key has room (other keys are not blocked behind a hot one) and park the rest. Once a
ready worker has read the queue (its jobs are parked; before that their keys are unknown and
bgq scales for all of them, as the operator does), bgq caps replicas at ceil((running +
startable) / concurrency); KEDA scales on the backlog up to maxReplicas.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from bgq_operator.podcost import PodView, count_busy, plan_scale_down
from bgq_operator.scaling import Observation, ScalingMemory, ScalingPolicy, decide

# ------------------------------------------------------------------------------------ traces


@dataclass
class Job:
    id: int
    arrival: float
    duration: float
    first_start: float | None = None
    start: float | None = None
    done: float | None = None
    interrupts: int = 0
    key: int = 0  # the job's limit key (traces with key_concurrency)


@dataclass(frozen=True)
class Trace:
    name: str
    description: str
    jobs: tuple[tuple[float, float], ...]  # (arrival, duration), sorted by arrival
    horizon: float  # simulate until this time (long enough for both systems to settle)
    rate: float | None = None  # spec.limits.rate: job starts per second for the whole queue
    keys: tuple[int, ...] | None = None  # the limit key of each job (same order as jobs)
    key_concurrency: int | None = None  # spec.limits.keys[].concurrency: per key at once


def trace_spike(rng: random.Random) -> Trace:
    """500 jobs (5-15 s each) land within 2 s into an idle queue at zero replicas."""
    jobs = [(10 + rng.uniform(0, 2), rng.uniform(5, 15)) for _ in range(500)]
    return Trace("spike-from-zero", "500 jobs of 5-15 s within 2 s, queue at 0 pods",
                 tuple(sorted(jobs)), 1200)


def trace_sawtooth(rng: random.Random) -> Trace:
    """Arrival rate ramps 0 -> 20 jobs/s over 60 s, then 60 s of silence; 8 teeth."""
    jobs: list[tuple[float, float]] = []
    for tooth in range(8):
        base = 10 + tooth * 120
        t = 0.0
        while t < 60:
            rate = max(0.05, 20 * t / 60)
            t += rng.expovariate(rate)
            if t < 60:
                jobs.append((base + t, rng.expovariate(1 / 5)))
    return Trace("sawtooth", "8 x (rate 0 -> 20 jobs/s over 60 s, then 60 s idle), ~5 s jobs",
                 tuple(sorted(jobs)), 1500)


def trace_long_trickle(rng: random.Random) -> Trace:
    """One 10-20 min job every 2 min for 30 min plus a trickle of 2 s jobs (0.3/s)."""
    jobs = [(10.0 + 120 * i, rng.uniform(600, 1200)) for i in range(15)]
    t = 10.0
    while t < 1810:
        t += rng.expovariate(0.3)
        jobs.append((t, 2.0))
    return Trace("long-jobs+trickle", "15 jobs of 10-20 min (one per 2 min) + 0.3/s 2 s jobs",
                 tuple(sorted(jobs)), 3600)


def trace_bursts(rng: random.Random) -> Trace:
    """Random bursts of 50-400 jobs (1-30 s) about every 4 min for an hour."""
    jobs: list[tuple[float, float]] = []
    t = 10.0
    while t < 3600:
        size = rng.randint(50, 400)
        jobs.extend((t + rng.uniform(0, 5), rng.uniform(1, 30)) for _ in range(size))
        t += rng.expovariate(1 / 240)
    return Trace("random-bursts", "bursts of 50-400 jobs (1-30 s) every ~4 min for 1 h",
                 tuple(sorted(jobs)), 4500)


def trace_rate_limited(rng: random.Random) -> Trace:
    """3000 jobs of 1-3 s land within 10 s on a queue limited to 20 job starts per second."""
    jobs = [(10 + rng.uniform(0, 10), rng.uniform(1, 3)) for _ in range(3000)]
    return Trace("rate-limited", "3000 jobs of 1-3 s within 10 s, limits.rate 20 jobs/s",
                 tuple(sorted(jobs)), 400, rate=20.0)


def trace_key_limited(rng: random.Random) -> Trace:
    """1500 jobs of 2-4 s within 10 s from 3 tenants (80 % one hot tenant), 8 per tenant at once."""
    arrivals = sorted((10 + rng.uniform(0, 10), rng.uniform(2, 4)) for _ in range(1500))
    keys = tuple(0 if rng.random() < 0.8 else rng.choice((1, 2)) for _ in arrivals)
    return Trace("key-limited", "1500 jobs of 2-4 s within 10 s, 3 tenants (80 % one), "
                 "limits.keys concurrency 8 per tenant", tuple(arrivals), 900, keys=keys,
                 key_concurrency=8)


TRACES: dict[str, Callable[[random.Random], Trace]] = {
    "spike": trace_spike,
    "sawtooth": trace_sawtooth,
    "long": trace_long_trickle,
    "bursts": trace_bursts,
    "rate": trace_rate_limited,
    "keys": trace_key_limited,
}

# ----------------------------------------------------------------------------------- cluster


@dataclass
class Pod:
    name: str
    created: float
    ready_at: float
    uid_rank: float  # stands in for the UID hash tie-break
    running: dict[int, float] = field(default_factory=dict)  # job id -> start time
    cost: int | None = None
    terminating_since: float | None = None

    def ready(self, t: float) -> bool:
        return t >= self.ready_at and self.terminating_since is None


@dataclass(frozen=True)
class Heartbeat:
    pod: str
    state: str
    in_flight: int
    oldest_started_ms: int
    heartbeat_ms: int


class Cluster:
    """A Deployment, its ReplicaSet, worker pods and the queue, stepped in fixed ``dt``."""

    def __init__(self, trace: Trace, *, concurrency: int, start_delay: float, grace: float,
                 seed: int) -> None:
        self.jobs = [Job(i, a, d, key=trace.keys[i] if trace.keys else 0)
                     for i, (a, d) in enumerate(trace.jobs)]
        self.pending_arrivals = deque(self.jobs)
        self.queue: deque[Job] = deque()
        self.pods: dict[str, Pod] = {}
        self.replicas = 0
        self.concurrency = concurrency
        self.start_delay = start_delay
        self.grace = grace
        self.rng = random.Random(seed)
        self.completions: list[tuple[float, int, str]] = []
        self.serial = 0
        self.replica_seconds = 0.0
        self.history: list[tuple[float, int]] = [(0.0, 0)]
        self.interrupted = 0
        self.first_ready: float | None = None
        self.zero_at: float | None = None
        self.last_done = 0.0
        self.rate = trace.rate  # the fetch script's token bucket (capacity = one second's worth)
        self.tokens = trace.rate or 0.0
        self.done_time = 0.0
        self.done_count = 0
        self.key_concurrency = trace.key_concurrency
        self.running_by_key: dict[int, int] = {}

    def run_time(self) -> float | None:
        """Mean run time of the jobs finished so far (what the operator observes)."""
        return self.done_time / self.done_count if self.done_count else None

    # -- what controllers see
    def in_flight(self) -> int:
        return sum(len(p.running) for p in self.pods.values())

    def startable(self, t: float) -> int | None:
        """What the operator's parked.lua read gives: parked jobs the keys' free slots let
        start; None without key limits or while no worker has read the queue yet."""
        if self.key_concurrency is None or not any(p.ready(t) for p in self.pods.values()):
            return None
        waiting: dict[int, int] = {}
        for job in self.queue:
            waiting[job.key] = waiting.get(job.key, 0) + 1
        return sum(min(n, max(0, self.key_concurrency - self.running_by_key.get(k, 0)))
                   for k, n in waiting.items())

    def ready_count(self, t: float) -> int:
        return sum(1 for p in self.pods.values() if p.ready(t))

    def heartbeats(self, t: float) -> list[Heartbeat]:
        beats = []
        for p in self.pods.values():
            if t < p.ready_at:
                continue
            oldest = min(p.running.values(), default=0.0)
            beats.append(Heartbeat(
                p.name,
                "draining" if p.terminating_since is not None
                else ("busy" if p.running else "idle"),
                len(p.running), int(oldest * 1000) if p.running else 0, int(t * 1000),
            ))
        return beats

    def pod_views(self, t: float) -> list[PodView]:
        return [PodView(p.name, p.ready(t), p.created, p.terminating_since is not None, p.cost)
                for p in self.pods.values()]

    # -- the ReplicaSet
    def set_replicas(self, n: int, t: float) -> None:
        if n == self.replicas:
            return
        self.replicas = n
        self.history.append((t, n))
        active = [p for p in self.pods.values() if p.terminating_since is None]
        for _ in range(n - len(active)):
            self.serial += 1
            name = f"w{self.serial}"
            self.pods[name] = Pod(name, t, t + self.start_delay, self.rng.random())
        excess = len(active) - n
        if excess > 0:
            for p in sorted(active, key=lambda p: self._rank(p, t))[:excess]:
                p.terminating_since = t

    def _rank(self, p: Pod, t: float) -> tuple[bool, bool, int, int, float]:
        running = t >= p.ready_at  # pending (starting) pods go first
        ready_for = max(t - p.ready_at, 0.0)
        bucket = int(math.log2(ready_for)) if ready_for >= 1 else -1
        return (running, p.ready(t), p.cost or 0, bucket, p.uid_rank)

    # -- time passes
    def step(self, t: float, dt: float) -> None:
        while self.pending_arrivals and self.pending_arrivals[0].arrival <= t:
            self.queue.append(self.pending_arrivals.popleft())
        while self.completions and self.completions[0][0] <= t:
            end, jid, pod_name = heapq.heappop(self.completions)
            pod = self.pods.get(pod_name)
            if pod is not None and jid in pod.running:
                del pod.running[jid]
                self._key_done(self.jobs[jid])
                self.jobs[jid].done = end
                self.last_done = max(self.last_done, end)
                self.done_time += self.jobs[jid].duration
                self.done_count += 1
        for name, pod in list(self.pods.items()):
            if pod.terminating_since is None:
                continue
            if pod.running and t - pod.terminating_since >= self.grace:
                for jid in sorted(pod.running, reverse=True):  # requeue at the head, in order
                    job = self.jobs[jid]
                    job.interrupts += 1
                    self.interrupted += 1
                    job.start = None
                    self._key_done(job)
                    self.queue.appendleft(job)
                pod.running.clear()
            if not pod.running:
                del self.pods[name]
        if self.rate is not None:
            self.tokens = min(self.rate, self.tokens + self.rate * dt)
        if self.queue and self.key_concurrency is not None:
            self._start_keyed(t)
        elif self.queue:
            free = [p for p in self.pods.values() if p.ready(t)
                    and len(p.running) < self.concurrency]
            while self.queue and free:
                if self.rate is not None:
                    if self.tokens < 1:
                        break  # over the limit: the job stays parked, no worker holds it
                    self.tokens -= 1
                pod = free[self.rng.randrange(len(free))]
                job = self.queue.popleft()
                job.start = t
                if job.first_start is None:
                    job.first_start = t
                pod.running[job.id] = t
                heapq.heappush(self.completions, (t + job.duration, job.id, pod.name))
                if len(pod.running) >= self.concurrency:
                    free.remove(pod)
        self._after_step(t, dt)

    def _key_done(self, job: Job) -> None:
        if self.key_concurrency is not None:
            self.running_by_key[job.key] -= 1

    def _start_keyed(self, t: float) -> None:
        """Per-key concurrency: the first jobs whose key has room, in order (no head-of-line
        blocking); the others stay parked."""
        conc = self.key_concurrency
        assert conc is not None
        free = [p for p in self.pods.values() if p.ready(t) and len(p.running) < self.concurrency]
        slots = sum(self.concurrency - len(p.running) for p in free)
        waiting: dict[int, int] = {}
        for job in self.queue:  # cheap next to the scan below; only while slots are free
            if not slots:
                break
            waiting[job.key] = waiting.get(job.key, 0) + 1
        room = {k for k in waiting if self.running_by_key.get(k, 0) < conc}
        if not slots or not room:
            return  # every key with waiting jobs is at its limit: they stay parked
        picked: set[int] = set()
        for job in self.queue:
            if len(picked) >= slots or not room:
                break
            if job.key in room:
                n = self.running_by_key.get(job.key, 0) + 1
                self.running_by_key[job.key] = n
                if n >= conc:
                    room.discard(job.key)
                picked.add(job.id)
                pod = free[self.rng.randrange(len(free))]
                job.start = t
                if job.first_start is None:
                    job.first_start = t
                pod.running[job.id] = t
                heapq.heappush(self.completions, (t + job.duration, job.id, pod.name))
                if len(pod.running) >= self.concurrency:
                    free.remove(pod)
        self.queue = deque(j for j in self.queue if j.id not in picked)

    def _after_step(self, t: float, dt: float) -> None:
        if self.first_ready is None and any(p.ready(t) for p in self.pods.values()):
            self.first_ready = t
        self.replica_seconds += len(self.pods) * dt
        if self.pods or self.replicas:
            self.zero_at = None
        elif self.zero_at is None:
            self.zero_at = t

# ------------------------------------------------------------------------------- controllers


class BgqController:
    """bgq's runtime loop in miniature: decide every tick, plan scale-down by deletion cost."""

    def __init__(self, policy: ScalingPolicy, tick: float) -> None:
        self.policy, self.tick, self.next_tick = policy, tick, 0.0
        self.memory = ScalingMemory()

    def step(self, c: Cluster, t: float) -> None:
        if t + 1e-9 < self.next_tick:
            return
        self.next_tick = t + self.tick
        views = [v for v in c.pod_views(t) if not v.deleting]
        beats = c.heartbeats(t)
        busy = count_busy(views, beats)
        obs = Observation(now=t, current_replicas=c.replicas, backlog=len(c.queue),
                          in_flight=c.in_flight(), ready_replicas=c.ready_count(t),
                          busy_pods=busy, run_time_s=c.run_time(), startable=c.startable(t))
        d = decide(self.policy, obs, self.memory)
        self.memory = d.memory
        if d.desired > c.replicas:
            c.set_replicas(d.desired, t)
        elif d.desired < c.replicas:
            plan = plan_scale_down(views, beats, int(t * 1000), c.replicas, d.desired)
            for name, value in plan.patches.items():
                c.pods[name].cost = int(value)
            if plan.safe_now and plan.replicas < c.replicas:
                c.set_replicas(plan.replicas, t)


class KedaHpaController:
    """KEDA (activation 0<->1, cooldown) + HPA (1<->N, behavior defaults) on the LLEN metric."""

    def __init__(self, *, max_replicas: int, list_length: int, rng: random.Random,
                 polling: float = 30, cooldown: float = 300, hpa_sync: float = 15,
                 tolerance: float = 0.1, down_window: float = 300, up_pods: int = 4,
                 up_percent: float = 100, up_period: float = 15,
                 metric: str = "llen", poll_at: float | None = None,
                 sync_at: float | None = None) -> None:
        self.max, self.target = max_replicas, list_length
        if metric not in ("llen", "xlen"):
            raise ValueError(f"metric must be llen or xlen, got {metric!r}")
        self.metric = metric
        """``llen``: the Redis list scaler (jobs popped by workers are invisible); ``xlen``: the
        redis-streams scaler's ``streamLength`` on a bgq stream, where an entry is deleted only
        when its job is acked, so the metric is backlog + in flight."""
        self.polling, self.cooldown, self.hpa_sync = polling, cooldown, hpa_sync
        self.tolerance, self.down_window = tolerance, down_window
        self.up_pods, self.up_percent, self.up_period = up_pods, up_percent, up_period
        # Loops started at some arbitrary moment before the trace: random phases (``poll_at``:
        # the first poll at this time, e.g. the phase a live run showed)
        self.next_poll = rng.uniform(0, polling) if poll_at is None else poll_at
        self.next_sync = rng.uniform(0, hpa_sync) if sync_at is None else sync_at % hpa_sync
        self.last_active: float | None = None
        self.recommendations: list[tuple[float, int]] = []
        self.scale_events: list[tuple[float, int]] = []  # (time, +replicas added by the HPA)

    def step(self, c: Cluster, t: float) -> None:
        if t + 1e-9 >= self.next_poll:
            self.next_poll += self.polling
            llen = self._usage(c)
            if llen > 0:  # activationListLength 0: active iff LLEN > 0
                self.last_active = t
                if c.replicas == 0:
                    c.set_replicas(1, t)  # scaleFromZeroOrIdle: max(1, minReplicaCount)
            elif (c.replicas > 0 and self.last_active is not None
                  and t >= self.last_active + self.cooldown):
                c.set_replicas(0, t)
        if t + 1e-9 >= self.next_sync:
            self.next_sync += self.hpa_sync
            if c.replicas > 0:  # ScalingDisabled at 0 replicas
                self._hpa(c, t)

    def _usage(self, c: Cluster) -> int:
        return len(c.queue) + (c.in_flight() if self.metric == "xlen" else 0)

    def _hpa(self, c: Cluster, t: float) -> None:
        current = c.replicas
        # External metric, AverageValue target (GetExternalPerPodMetricReplicas)
        usage = self._usage(c)
        ratio = usage / (self.target * current)
        desired = current if abs(ratio - 1) <= self.tolerance else math.ceil(usage / self.target)
        # stabilizeRecommendationWithBehaviors: up window 0, down window 300 s.
        self.recommendations = [(ts, r) for ts, r in self.recommendations
                                if ts > t - self.down_window]
        down = max([desired] + [r for _, r in self.recommendations])
        up = desired
        rec = max(current, up)
        rec = min(rec, down)
        self.recommendations.append((t, desired))
        # convertDesiredReplicasWithBehaviorRate: scale-up policies, selectPolicy Max.
        self.scale_events = [(ts, n) for ts, n in self.scale_events if ts > t - self.up_period]
        period_start = current - sum(n for _, n in self.scale_events)
        up_limit = max(period_start + self.up_pods,
                       math.ceil(period_start * (1 + self.up_percent / 100)))
        new = min(rec, up_limit, self.max)
        new = max(new, 1)  # HPA minReplicas = max(1, minReplicaCount)
        # scale-down policy Percent 100 / 15 s never limits.
        if new != current:
            if new > current:
                self.scale_events.append((t, new - current))
            c.set_replicas(new, t)

# ---------------------------------------------------------------------------------- running


@dataclass
class Result:
    system: str
    replica_seconds: float
    p95_wait: float
    max_wait: float
    interrupted: int
    direction_changes: int
    first_pod: float | None
    idle_tail: float | None
    peak: int
    unfinished: int


def run(trace: Trace, system: str, controller: BgqController | KedaHpaController, *,
        concurrency: int, start_delay: float, grace: float, dt: float, seed: int) -> Result:
    c = Cluster(trace, concurrency=concurrency, start_delay=start_delay, grace=grace, seed=seed)
    steps = int(trace.horizon / dt)
    for i in range(steps + 1):
        t = round(i * dt, 6)
        controller.step(c, t)
        c.step(t, dt)
    waits = sorted((j.first_start - j.arrival) for j in c.jobs if j.first_start is not None)
    unfinished = sum(1 for j in c.jobs if j.done is None)
    p95 = waits[min(len(waits) - 1, math.ceil(0.95 * len(waits)) - 1)] if waits else math.nan
    deltas = [b - a for (_, a), (_, b) in itertools.pairwise(c.history)]
    signs = [d > 0 for d in deltas if d]
    changes = sum(1 for a, b in itertools.pairwise(signs) if a != b)
    first_arrival = trace.jobs[0][0]
    first_pod = None if c.first_ready is None else c.first_ready - first_arrival
    idle_tail = None if c.zero_at is None or unfinished else max(0.0, c.zero_at - c.last_done)
    return Result(system, c.replica_seconds, p95, waits[-1] if waits else math.nan,
                  c.interrupted, changes, first_pod, idle_tail,
                  max(n for _, n in c.history), unfinished)


def simulate(trace: Trace, args: argparse.Namespace) -> list[Result]:
    policy = ScalingPolicy(min_replicas=0, max_replicas=args.max_replicas,
                           jobs_per_pod=args.concurrency, scale_down_delay_s=30,
                           idle_before_zero_s=60)
    common = {"concurrency": args.concurrency, "start_delay": args.start_delay,
              "grace": args.grace, "dt": args.dt, "seed": args.seed}
    if trace.rate is not None:
        policy = replace(policy, rate_per_s=trace.rate)
    metric = getattr(args, "keda_metric", "llen")
    phases: dict[str, float] = getattr(args, "keda_poll_at", None) or {}
    syncs: dict[str, float] = getattr(args, "keda_hpa_at", None) or {}
    out = [
        run(trace, "bgq", BgqController(policy, tick=1.0), **common),
        run(trace, "KEDA+HPA", KedaHpaController(
            max_replicas=args.max_replicas, list_length=args.concurrency,
            rng=random.Random(f"{args.seed}:{trace.name}:keda"), metric=metric,
            poll_at=phases.get("KEDA+HPA"), sync_at=syncs.get("KEDA+HPA")), **common),
    ]
    if args.tuned:
        # What a KEDA user tunes in the ScaledObject (bench/keda_live.py runs the same live):
        # pollingInterval 5, cooldownPeriod 60, a 60 s scale-down stabilisation window. The
        # HPA's 15 s sync (a kube-controller-manager flag), its default scale-up policy and
        # the lag metric stay.
        out.append(run(trace, "KEDA+HPA tuned", KedaHpaController(
            max_replicas=args.max_replicas, list_length=args.concurrency,
            rng=random.Random(f"{args.seed}:{trace.name}:keda"), polling=5, cooldown=60,
            down_window=60, metric=metric, poll_at=phases.get("KEDA+HPA tuned"),
            sync_at=syncs.get("KEDA+HPA tuned")), **common))
    return out


def fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "never"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:.1f}{unit}" if unit else f"{value:.0f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    if b == 0:
        return "-" if a == 0 else "inf"
    return f"{a / b:.1f}x"


def table(rows: Iterable[tuple[Trace, list[Result]]]) -> str:
    head = ("| trace | system | replica-s | p95 wait | max wait | interrupted | "
            "direction changes | first pod ready | idle tail | peak pods | unfinished |")
    lines = [head, "|" + "---|" * 11]
    summary = ["", "KEDA+HPA (defaults) relative to bgq:", "",
               "| trace | replica-s KEDA/bgq | p95 wait KEDA/bgq | max wait KEDA/bgq | "
               "interrupted KEDA vs bgq | first pod KEDA/bgq |", "|" + "---|" * 6]
    for trace, results in rows:
        for r in results:
            lines.append(
                f"| {trace.name} | {r.system} | {r.replica_seconds:.0f} | {fmt(r.p95_wait)} | "
                f"{fmt(r.max_wait)} | {r.interrupted} | {r.direction_changes} | "
                f"{fmt(r.first_pod)} | {fmt(r.idle_tail)} | {r.peak} | {r.unfinished} |"
            )
        b, k = results[:2]
        summary.append(
            f"| {trace.name} | {ratio(k.replica_seconds, b.replica_seconds)} | "
            f"{ratio(k.p95_wait, b.p95_wait)} | {ratio(k.max_wait, b.max_wait)} | "
            f"{k.interrupted} vs {b.interrupted} | {ratio(k.first_pod, b.first_pod)} |"
        )
    return "\n".join(lines + summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--trace", action="append", choices=sorted(TRACES),
                        help="trace(s) to run (default: all)")
    parser.add_argument("--dt", type=float, default=0.1, help="simulation step, seconds")
    parser.add_argument("--concurrency", type=int, default=10, help="job slots per pod")
    parser.add_argument("--max-replicas", type=int, default=60)
    parser.add_argument("--start-delay", type=float, default=2.0,
                        help="pod created -> ready, seconds")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="terminationGracePeriodSeconds")
    parser.add_argument("--keda-metric", choices=["llen", "xlen"], default="llen",
                        help="KEDA's metric: llen = the list scaler (default), xlen = the "
                        "redis-streams scaler's streamLength on a bgq stream (backlog + in "
                        "flight; what bench/keda_live.py runs)")
    parser.add_argument("--tuned", action="store_true",
                        help="also run KEDA+HPA tuned (polling 5 s, cooldown 60 s, 60 s "
                        "scale-down stabilisation)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = []
    for key in args.trace or list(TRACES):
        trace = TRACES[key](random.Random(f"{args.seed}:{key}"))
        rows.append((trace, simulate(trace, args)))
    print(f"autoscale_sim seed={args.seed} concurrency={args.concurrency} "
          f"max={args.max_replicas} start-delay={args.start_delay}s grace={args.grace}s "
          f"dt={args.dt}s")
    for trace, _ in rows:
        print(f"- {trace.name}: {trace.description} ({len(trace.jobs)} jobs, "
              f"{trace.horizon:.0f}s simulated)")
    print()
    print(table(rows))
    print(f"\n({time.perf_counter() - started:.1f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
