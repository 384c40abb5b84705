"""Sampling a queue while it works, and the live terminal view of it.

:class:`Sampler` polls, about once a second: the queue's demand straight from Redis
(``bgq.Client.stats``: backlog, in flight, due, the workers' heartbeats), the BackgroundQueue's
status (desired replicas and the autoscaler's reason, in words), the worker pods, and how many
of the run's jobs are final. :class:`LiveView` shows that with ``rich`` (a table, a progress bar,
jobs/s); :class:`PlainView` prints one line every few seconds when stdout is not a terminal (CI
logs, pipes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import redis
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from tests.e2e.kube import Cluster

import bgq
from bgq.protocol import QueueName
from bgqdemo.summary import Sample

FINAL_STATES = frozenset({"succeeded", "dead", "cancelled"})


class Sampler:
    """Reads one :class:`Sample` of the queue ``namespace/name`` and its jobs ``ids``."""

    def __init__(self, cluster: Cluster, namespace: str, name: str, redis_url: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.queue = QueueName(namespace, name)
        self.client = bgq.Client(redis_url)
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.ids: list[str] = []
        self.draining_busy: set[str] = set()  # pods seen draining with jobs in flight

    def close(self) -> None:
        self.client.close()
        self.redis.close()

    def job_key(self, job_id: str) -> str:
        return f"bgq:{{{self.queue}}}:job:{job_id}"

    def states(self) -> list[str]:
        """The current state of every job of the run ("" when its hash is missing)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in self.ids:
            pipe.hget(self.job_key(job_id), "state")
        return [s or "" for s in pipe.execute()]

    def sample(self) -> Sample:
        demand = self.client.stats(self.queue)
        for hb in demand.workers:
            if hb.state == "draining" and hb.in_flight > 0:
                self.draining_busy.add(hb.pod)
        obj = self.cluster.get_json("backgroundqueue", self.name, "-n", self.namespace)
        status: dict[str, Any] = obj.get("status", {})
        scaling = status.get("scaling", {})
        pods = self.cluster.get_json("pods", "-n", self.namespace, "-l",
                                     f"bgq.dev/queue={self.name}")["items"]
        ready = sum(
            1 for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", [])))
        states = self.states() if self.ids else []
        return Sample(
            t=time.time(),
            backlog=demand.backlog,
            in_flight=demand.in_flight,
            due=demand.due,
            delayed=demand.delayed,
            desired=int(scaling.get("desired") or status.get("desiredReplicas") or 0),
            replicas=int(status.get("replicas") or 0),
            pods=len(pods),
            ready=ready,
            draining=sum(1 for hb in demand.workers if hb.state == "draining"),
            reason=str(scaling.get("reason") or ""),
            done=sum(1 for s in states if s in FINAL_STATES),
            total=len(self.ids),
        )


def jobs_per_second(samples: Sequence[Sample], window: float = 5.0) -> float:
    """Jobs finished per second over the last ``window`` seconds of samples."""
    if len(samples) < 2:
        return 0.0
    last = samples[-1]
    first = next((s for s in samples if s.t >= last.t - window), samples[0])
    if first is last:
        first = samples[-2]
    dt = last.t - first.t
    return max(0.0, (last.done - first.done) / dt) if dt > 0 else 0.0


class View(Protocol):
    def __enter__(self) -> View: ...
    def __exit__(self, *exc: object) -> None: ...
    def update(self, samples: Sequence[Sample], note: str = "") -> None: ...


class LiveView:
    """The rich live view: queue figures, replicas and the reason, a progress bar."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.progress = Progress(
            TextColumn("[bold]jobs"), BarColumn(bar_width=None), MofNCompleteColumn(),
            TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task("jobs", total=None)
        self.live = Live(Group(Text(title)), console=console, refresh_per_second=4,
                         transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def update(self, samples: Sequence[Sample], note: str = "") -> None:
        s = samples[-1]
        table = Table(expand=True, show_edge=True, title=self.title, title_justify="left")
        for col in ("backlog", "in-flight", "due", "desired", "replicas", "ready", "jobs/s"):
            table.add_column(col, justify="right")
        table.add_row(str(s.backlog), str(s.in_flight), str(s.due), str(s.desired),
                      str(s.pods), str(s.ready), f"{jobs_per_second(samples):.1f}")
        reason = Text.assemble(("autoscaler: ", "bold"), s.reason or "(no decision yet)")
        self.progress.update(self.task, total=s.total or None, completed=s.done)
        parts: list[Any] = [table, reason, self.progress]
        if s.draining:
            parts.append(Text(f"{s.draining} worker(s) draining: finishing their jobs",
                              style="yellow"))
        if note:
            parts.append(Text(note, style="cyan"))
        self.live.update(Group(*parts))


class PlainView:
    """One line every ``every`` seconds (and on notes), for logs and pipes."""

    def __init__(self, console: Console, title: str, every: float = 3.0) -> None:
        self.console = console
        self.title = title
        self.every = every
        self.last = 0.0
        self.t0 = time.time()

    def __enter__(self) -> PlainView:
        self.console.print(self.title, markup=False, highlight=False)
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, samples: Sequence[Sample], note: str = "") -> None:
        s = samples[-1]
        if note:
            self.console.print(f"  t+{s.t - self.t0:5.1f}s  {note}", markup=False,
                               highlight=False)
        if s.t - self.last < self.every and s.done < s.total:
            return
        self.last = s.t
        self.console.print(
            f"  t+{s.t - self.t0:5.1f}s  backlog={s.backlog} in_flight={s.in_flight} "
            f"due={s.due} desired={s.desired} replicas={s.pods} ready={s.ready} "
            f"jobs/s={jobs_per_second(samples):.1f} done={s.done}/{s.total}"
            f"{' draining=' + str(s.draining) if s.draining else ''} | {s.reason}",
            markup=False, highlight=False, soft_wrap=True)


def make_view(console: Console, title: str, plain: bool = False) -> View:
    """The live view on a terminal, plain lines otherwise (or when asked)."""
    if console.is_terminal and not plain:
        return LiveView(console, title)
    return PlainView(console, title)
