"""bgq versus other Python queues on Redis: no-op jobs/s processed by ONE worker process of each
system, measured side by side in one run on the same private redis-server.

    .venv/bin/pip install -e '.[operator,dev,bench]'   # dramatiq[redis], rq, celery[redis]
    .venv/bin/python bench/compare_queues.py            # about 1-2 minutes on 2 cores
    .venv/bin/python bench/compare_queues.py --jobs 2000 --only bgq dramatiq
    .venv/bin/python bench/compare_queues.py --only bgq --bgq-before 32e04da   # worker before/after

For every row: FLUSHALL, enqueue N no-op jobs with the library's own client (bulk where it has
one; not timed), then spawn one worker process of that system (its own CLI, in its own process
group) and poll Redis every 5 ms until the library's own completion state says all N are done:

* bgq: the queue's stats hash ``succeeded`` counter (written by the settle script).
* Dramatiq: the ``dramatiq:default.msgs`` hash (a message leaves it when it is acked, which
  Dramatiq does after the actor returns).
* RQ: the finished-job registry (ZCARD ``rq:finished:default``).
* Celery: queue list empty and kombu's ``unacked`` hash empty, with ``task_acks_late=True`` so
  a message is acked only after the task returned (bgq's guarantee; Celery's default acks
  before running, which would make "unacked empty" mean "started", not "done").

The task is the same nothing everywhere (``def noop(): pass``; bgq's default row uses
``async def``, its natural path, and one row runs a plain ``def`` on bgq's thread pool). No
task writes anything itself: results and bookkeeping are whatever each library does by default.

Columns: ``s`` is worker spawn to last job done (includes interpreter start and imports);
``jobs/s`` is the steady rate from the first to the last completed job seen by the poller (so
start-up cost does not decide the ratio); ``cmds/job`` is the delta of INFO stats
``total_commands_processed`` (includes commands inside Lua scripts) from spawn to done, minus
the poller's own commands, divided by N. ``x bgq`` is this row's jobs/s divided by bgq's at its
default concurrency (10).

ARQ is not included: arq 0.28 requires redis-py <6 and bgq requires redis-py >=8.1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType

import redis

from throughput import commands, redis_server

BGQ_QUEUE = "bench/compare"
POLL_SECONDS = 0.005

# Task modules written to a temporary directory that is put on the workers' PYTHONPATH, so each
# worker imports only its own library (RQ's forking worker imports the job's module in every
# work horse: a heavy shared module would slow it down unfairly).
TASK_MODULES: dict[str, str] = {
    "bench_tasks_bgq": '''
import bgq

@bgq.task(name="noop")
async def noop() -> None:
    pass

@bgq.task(name="noop_sync")
def noop_sync() -> None:
    pass
''',
    "bench_tasks_dramatiq": '''
import os
import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)

@dramatiq.actor(max_retries=0)
def noop():
    pass
''',
    "bench_tasks_rq": '''
def noop():
    pass
''',
    "bench_tasks_celery": '''
import os
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(task_acks_late=True, task_ignore_result=True, worker_hijack_root_logger=False)

@app.task(name="noop")
def noop():
    pass
''',
}


@dataclass
class System:
    """One row of the table: how to enqueue, how to run one worker, how to count done jobs."""

    name: str
    config: str
    jobs: int
    enqueue: Callable[[str, int], None]
    command: Callable[[str], list[str]]
    # Returns (jobs done, Redis commands this poll cost).
    progress: Callable[[redis.Redis, int], tuple[int, int]]
    exits_when_done: bool = False
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    system: System
    done: int
    seconds: float
    steady_rate: float
    cmds_per_job: float
    worker_cpu_us: float
    redis_cpu_us: float
    load: float
    note: str = ""


def _bin(name: str) -> str:
    """A console script installed next to this interpreter (the venv's)."""
    return str(Path(sys.executable).with_name(name))


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


# --- bgq -------------------------------------------------------------------------------------


def bgq_enqueue(task: str) -> Callable[[str, int], None]:
    def enqueue(url: str, n: int) -> None:
        import bgq

        _module("bench_tasks_bgq")
        with bgq.Client(url) as client:
            client.enqueue_many(BGQ_QUEUE, (bgq.JobSpec(task) for _ in range(n)))

    return enqueue


def bgq_progress(r: redis.Redis, n: int) -> tuple[int, int]:
    from bgq.protocol import QueueName

    return int(r.hget(QueueName.parse(BGQ_QUEUE).keys.stats, "succeeded") or 0), 1


def bgq_system(jobs: int, concurrency: int, sync: bool = False) -> System:
    kind = "plain def on its thread pool" if sync else "async def"
    return System(
        name="bgq" + (" (sync def)" if sync else ""),
        config=f"`bgq worker`, 1 process, asyncio, concurrency {concurrency}, {kind}",
        jobs=jobs,
        enqueue=bgq_enqueue("noop_sync" if sync else "noop"),
        command=lambda url: [_bin("bgq"), "worker", "bench_tasks_bgq", "--queue", BGQ_QUEUE,
                             "--concurrency", str(concurrency), "--redis-url", url],
        progress=bgq_progress,
        env={"BGQ_HTTP_PORT": "0", "BGQ_LOG_LEVEL": "WARNING", "BGQ_POD_NAME": "bench"},
    )


def bgq_before_system(jobs: int, concurrency: int, ref: str, src: Path) -> System:
    """bgq's worker as of git ``ref`` (its ``worker/bgq`` extracted to ``src``), same client,
    same tasks: the before/after rows of a worker change, measured in one run."""
    return System(
        name=f"bgq @{ref}",
        config=f"`python -m bgq.worker` @{ref}, 1 process, concurrency {concurrency}, async def",
        jobs=jobs,
        enqueue=bgq_enqueue("noop"),
        command=lambda url: [sys.executable, "-m", "bgq.worker", "bench_tasks_bgq",
                             "--queue", BGQ_QUEUE, "--concurrency", str(concurrency)],
        progress=bgq_progress,
        env={"BGQ_HTTP_PORT": "0", "BGQ_LOG_LEVEL": "WARNING", "BGQ_POD_NAME": "bench",
             "PYTHONPATH": f"{src / 'worker'}{os.pathsep}{{tmp}}"},
    )


def extract_ref(ref: str, into: Path) -> Path:
    """``git archive ref worker/bgq`` into ``into`` (the old package, importable as ``bgq``)."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", ref, "worker/bgq"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


# --- Dramatiq --------------------------------------------------------------------------------


def dramatiq_enqueue(url: str, n: int) -> None:
    mod = _module("bench_tasks_dramatiq")  # no bulk API: one Lua call per message
    for _ in range(n):
        mod.noop.send()


def dramatiq_progress(r: redis.Redis, n: int) -> tuple[int, int]:
    return n - int(r.hlen("dramatiq:default.msgs")), 1


def dramatiq_system(jobs: int) -> System:
    return System(
        name="Dramatiq",
        config="`dramatiq --processes 1` (default 8 threads), default middleware, RedisBroker",
        jobs=jobs,
        enqueue=dramatiq_enqueue,
        command=lambda url: [_bin("dramatiq"), "--processes", "1", "bench_tasks_dramatiq"],
        progress=dramatiq_progress,
    )


# --- RQ --------------------------------------------------------------------------------------


def rq_enqueue(url: str, n: int) -> None:
    from rq import Queue

    conn = redis.Redis.from_url(url)
    q = Queue("default", connection=conn)
    for start in range(0, n, 1000):  # enqueue_many pipelines a batch in one round trip
        batch = [Queue.prepare_data("bench_tasks_rq.noop") for _ in range(min(1000, n - start))]
        with conn.pipeline() as pipe:
            q.enqueue_many(batch, pipeline=pipe)
            pipe.execute()
    conn.close()


def rq_progress(r: redis.Redis, n: int) -> tuple[int, int]:
    return int(r.zcard("rq:finished:default")), 1


def rq_system(jobs: int, worker_class: str, label: str) -> System:
    return System(
        name=f"RQ ({label})",
        config=f"`rq worker --burst -w {worker_class}`, default result TTL",
        jobs=jobs,
        enqueue=rq_enqueue,
        command=lambda url: [_bin("rq"), "worker", "--burst", "--quiet", "--url", url,
                             "-w", worker_class, "default"],
        progress=rq_progress,
        exits_when_done=True,
    )


# --- Celery ----------------------------------------------------------------------------------


def celery_enqueue(url: str, n: int) -> None:
    mod = _module("bench_tasks_celery")  # no bulk API: one LPUSH per message
    with mod.app.producer_or_acquire() as producer:
        for _ in range(n):
            mod.noop.apply_async(producer=producer)


def celery_progress(r: redis.Redis, n: int) -> tuple[int, int]:
    with r.pipeline(transaction=False) as pipe:
        pipe.llen("celery")
        pipe.hlen("unacked")
        waiting, unacked = pipe.execute()
    return n - int(waiting) - int(unacked), 2


def celery_system(jobs: int, pool_args: list[str], label: str) -> System:
    return System(
        name=f"Celery ({label})",
        config=f"`celery worker {' '.join(pool_args)}`, acks_late, ignore_result, "
               "default prefetch x4, gossip/mingle/heartbeat on",
        jobs=jobs,
        enqueue=celery_enqueue,
        command=lambda url: [_bin("celery"), "-A", "bench_tasks_celery", "worker",
                             "--loglevel", "WARNING", *pool_args],
        progress=celery_progress,
    )


# --- the measurement -------------------------------------------------------------------------


@contextlib.contextmanager
def worker_process(
    argv: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in its own process group; the whole group is ended on exit, even on error."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                # Children (Dramatiq's worker, Celery's pool) may outlive the parent briefly.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            except subprocess.TimeoutExpired:
                continue


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user+sys, plus reaped children's) of every live process in group ``pgid``.

    Children reaped by a group member (RQ's work horses, a pool's exited children) are counted
    through their parent's cutime/cstime.
    """
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        # fields[0] is field 3 (state): pgrp is field 5, utime..cstime are fields 14..17.
        if int(fields[2]) == pgid:
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(system: System, url: str, tmp: Path, time_cap: float) -> Result:
    r = redis.Redis.from_url(url)
    r.flushall()
    system.enqueue(url, system.jobs)
    env = {**os.environ, "BENCH_REDIS_URL": url, "BGQ_REDIS_URL": url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp), os.environ.get("PYTHONPATH")])),
           **{k: v.replace("{tmp}", str(tmp)) for k, v in system.env.items()}}
    log = tmp / f"{system.name.replace(' ', '_').replace('/', '_')}.log"
    n = system.jobs
    poll_cmds = 0
    note = ""
    load = os.getloadavg()[0]
    c0 = commands(r)
    t0 = time.perf_counter()
    first: tuple[float, int] | None = None
    cpu0 = (0.0, 0.0)
    with worker_process(system.command(url), env, log) as proc:
        while True:
            done, cost = system.progress(r, n)
            now = time.perf_counter()
            poll_cmds += cost
            if done > 0 and first is None:
                first = (now, done)
                cpu0 = (group_cpu_seconds(proc.pid), redis_cpu_seconds(r))
                poll_cmds += 1
            if done >= n:
                break
            if proc.poll() is not None and not system.exits_when_done:
                tail = log.read_text(errors="replace")[-1500:]
                raise SystemExit(f"{system.name} worker exited early ({proc.returncode}):\n{tail}")
            if proc.poll() is not None or now - t0 > time_cap:
                note = "worker exited" if proc.poll() is not None else f"time cap {time_cap:.0f} s"
                break
            time.sleep(POLL_SECONDS)
        cpu1 = (group_cpu_seconds(proc.pid), redis_cpu_seconds(r))
        c1 = commands(r)
        poll_cmds += 1
    seconds = now - t0
    window_jobs = done - first[1] if first else 0
    if first is None or window_jobs <= 0 or now <= first[0]:
        steady = done / seconds
        window_jobs = 0
    else:
        steady = window_jobs / (now - first[0])
    cmds = (c1 - c0 - 1 - poll_cmds) / max(done, 1)
    per_job = 1e6 / window_jobs if window_jobs else float("nan")
    r.close()
    return Result(system, done, seconds, steady, cmds, (cpu1[0] - cpu0[0]) * per_job,
                  (cpu1[1] - cpu0[1]) * per_job, load, note)


def versions() -> str:
    out = []
    for dist in ("bgq", "dramatiq", "rq", "celery", "kombu", "redis"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{dist} {metadata.version(dist)}")
    return ", ".join(out)


def table(results: list[Result], base: float | None) -> str:
    lines = [
        "| system | configuration | jobs | s | jobs/s | x bgq | cmds/job | worker CPU µs/job "
        "| redis CPU µs/job | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        ratio = f"{res.steady_rate / base:.3f}" if base else "-"
        jobs = f"{res.done}" + (f" of {res.system.jobs} ({res.note})" if res.note else "")
        lines.append(
            f"| {res.system.name} | {res.system.config} | {jobs} | {res.seconds:.2f} | "
            f"{res.steady_rate:,.0f} | {ratio} | {res.cmds_per_job:.2f} | "
            f"{res.worker_cpu_us:,.0f} | {res.redis_cpu_us:,.0f} | {res.load:.1f} |"
        )
    return "\n".join(lines)


def systems(args: argparse.Namespace) -> list[System]:
    n = args.jobs
    all_systems = [
        bgq_system(args.bgq_jobs, 10),
        bgq_system(args.bgq_jobs, 200),
        bgq_system(n, 10, sync=True),
        dramatiq_system(n),
        celery_system(n, ["--pool", "solo"], "solo"),
        celery_system(n, ["--pool", "prefork", "--concurrency", "1"], "prefork 1"),
        celery_system(n, ["--pool", "threads", "--concurrency", "8"], "threads 8"),
        rq_system(n, "rq.worker.SimpleWorker", "SimpleWorker, no fork"),
        rq_system(args.rq_fork_jobs, "rq.worker.Worker", "Worker, fork per job"),
    ]
    if args.bgq_before:
        src = extract_ref(args.bgq_before, Path(tempfile.mkdtemp(prefix="bgq-before-")))
        all_systems[2:2] = [bgq_before_system(args.bgq_jobs, 10, args.bgq_before, src),
                            bgq_before_system(args.bgq_jobs, 200, args.bgq_before, src)]
    # bgq's baseline again at the end: shows how much the machine's load drifted during the run.
    again = bgq_system(args.bgq_jobs, 10)
    again.name = "bgq (again, drift check)"
    all_systems.append(again)
    if args.only:
        wanted = [w.lower() for w in args.only]
        all_systems = [s for s in all_systems
                       if any(s.name.lower().startswith(w) for w in wanted)]
    return all_systems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=5000, help="jobs per other system (default 5000)")
    p.add_argument("--bgq-jobs", type=int, default=20_000,
                   help="jobs for bgq's async rows (default 20000: 5000 take ~0.3 s)")
    p.add_argument("--rq-fork-jobs", type=int, default=500,
                   help="jobs for RQ's fork-per-job worker (default 500, ~60/s)")
    p.add_argument("--time-cap", type=float, default=60.0,
                   help="seconds one worker may run before the row is cut (default 60)")
    p.add_argument("--only", nargs="*", help="run only systems whose name starts with these")
    p.add_argument("--bgq-before", metavar="GIT_REF",
                   help="also run bgq's worker as of this git ref (before/after rows, one run)")
    args = p.parse_args(argv)

    load0 = os.getloadavg()
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(redis_server())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bgq-compare-")))
        for name, source in TASK_MODULES.items():
            (tmp / f"{name}.py").write_text(source)
        os.environ["BENCH_REDIS_URL"] = url  # the task modules read it when imported here
        sys.path.insert(0, str(tmp))
        info = redis.Redis.from_url(url).info("server")
        for system in systems(args):
            print(f"  {system.name}: {system.jobs} jobs ...", file=sys.stderr, flush=True)
            results.append(measure(system, url, tmp, args.time_cap))
    load1 = os.getloadavg()
    base = next((r.steady_rate for r in results if r.system.name == "bgq"
                 and r.system.config.endswith("concurrency 10, async def")), None)
    print(f"machine: {os.cpu_count()} CPUs ({platform.machine()}), python "
          f"{platform.python_version()}, redis-server {info['redis_version']} (private, "
          f"no persistence), load average {load0[0]:.2f} before, {load1[0]:.2f} after")
    print(f"versions: {versions()}")
    print()
    print(table(results, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
