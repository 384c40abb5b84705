"""The ``bgq`` command line: run a worker, enqueue, inspect queues, jobs and dead letters.

Every command prints aligned, human-readable text by default and one JSON document (``--json``) for
scripts. Expected failures (Redis unreachable, bad ``--args`` JSON, an unknown job, an invalid
queue name) print one line on stderr, never a traceback, and exit with a code scripts can test:

====  ===========================================================================
code  meaning
====  ===========================================================================
0     success
1     operational error: Redis unreachable, the job failed (``--wait``), ...
2     usage error: bad option, bad JSON, invalid queue name
3     not found: unknown job or dead letter
4     ``--wait`` timed out before the job finished
130   interrupted (Ctrl-C)
====  ===========================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, NoReturn

from bgq import safejson
from bgq.client import Client, DeadLetter, JobInfo
from bgq.connection import redis_errors
from bgq.errors import (
    BgqError,
    ConfigError,
    InvalidQueueName,
    JobCancelled,
    JobFailed,
    JobNotFound,
    PayloadError,
    RedisUnavailable,
    WaitTimeout,
)
from bgq.gateway import job_document, stats_document
from bgq.listing import LISTABLE
from bgq.protocol import PRIORITIES, QueueName
from bgq.settings import DEFAULT_REDIS_URL, ClientSettings

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CliError",
    "build_parser",
    "dead_document",
    "format_duration",
    "format_fields",
    "format_table",
    "main",
    "parse_json_option",
    "parse_priority",
    "render_dead",
    "render_job",
    "render_stats",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An expected failure: ``message`` goes to stderr as one line, ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# -- pure helpers: parsing of option values --------------------------------------------------------


def parse_json_option(
    option: str, text: str, expect: type[list[Any]] | type[dict[str, Any]]
) -> Any:
    """Parse the JSON given to ``option``; a usage error names the option and what is wrong."""
    try:
        value = safejson.loads(text, what=option)
    except json.JSONDecodeError as err:
        raise CliError(
            f"{option}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
            EXIT_USAGE,
        ) from err
    except PayloadError as err:
        raise CliError(str(err), EXIT_USAGE) from err
    if not isinstance(value, expect):
        wanted = "a JSON array" if expect is list else "a JSON object"
        raise CliError(f"{option}: must be {wanted}, got {type(value).__name__}", EXIT_USAGE)
    return value


def parse_priority(text: str) -> int:
    """``high``/``normal``/``low`` or the band number ``0``/``1``/``2`` → band number."""
    value = text.strip().lower()
    if value in PRIORITIES:
        return PRIORITIES[value]
    if value in {"0", "1", "2"}:
        return int(value)
    raise argparse.ArgumentTypeError(f"must be high, normal, low or 0, 1, 2; got {text!r}")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 0..65535, got {text!r}")
    return value


# -- pure helpers: formatting ----------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """A compact human duration: ``-``, ``850ms``, ``4.2s``, ``3m05s``, ``2h03m``, ``3d04h``."""
    if seconds is None or seconds < 0 or not math.isfinite(seconds):
        return "-"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; numbers are right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(widths[i]) if numeric[i] else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in cells)])


def format_fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``key  value`` lines with the keys padded to one width (for single records)."""
    width = max((len(key) for key, _ in pairs), default=0)
    return "\n".join(f"{key.ljust(width)}  {_cell(value)}".rstrip() for key, value in pairs)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value).replace("\n", " ")


def _short(text: str, limit: int = 60) -> str:
    text = text.replace("\n", " ").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the parser ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` returns the status code."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message} (see {self.prog} --help)", EXIT_USAGE)


def _common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--redis-url``, ``--namespace`` and ``--json`` are accepted before or after the command.

    On subcommands the default is SUPPRESS, so a value given before the command is not reset.
    """
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--redis-url",
        default=default,
        metavar="URL",
        help="Redis URL (default: $BGQ_REDIS_URL, else " + DEFAULT_REDIS_URL + ")",
    )
    parser.add_argument(
        "--namespace",
        "-n",
        default=default,
        metavar="NS",
        help="namespace for bare queue names (default: $BGQ_NAMESPACE, pod namespace, default)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print JSON for scripts instead of tables",
    )


def build_parser() -> argparse.ArgumentParser:
    """The complete ``bgq`` argument parser (pure: no I/O, no environment lookups)."""
    parser = _Parser(
        prog="bgq",
        description="bgq: Kubernetes-native background queues on Redis Streams.",
        epilog="Exit codes: 0 ok, 1 operational error, 2 usage error, 3 not found, "
        "4 --wait timed out.",
    )
    _common_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _common_options(sub, top=False)
        return sub

    worker = command("worker", "run a worker process for one queue")
    worker.add_argument(
        "module", nargs="?", help="tasks module to import (default: $BGQ_TASKS_MODULE)"
    )
    worker.add_argument("--queue", "-q", help="queue ns/name (default: $BGQ_QUEUE)")
    worker.add_argument(
        "--concurrency", "-c", type=_positive_int, help="jobs at once (default: $BGQ_CONCURRENCY)"
    )

    enqueue = command("enqueue", "enqueue one job")
    enqueue.add_argument("queue", help="queue: ns/name, or a bare name in --namespace")
    enqueue.add_argument("task", help="task name, e.g. myapp.tasks.send_email")
    enqueue.add_argument("--args", default="[]", metavar="JSON", help="positional args array")
    enqueue.add_argument("--kwargs", default="{}", metavar="JSON", help="keyword args object")
    enqueue.add_argument("--job-id", metavar="ID", help="caller job id: enqueue is idempotent")
    enqueue.add_argument(
        "--delay", type=_non_negative_float, metavar="SECONDS", help="run no earlier than this"
    )
    enqueue.add_argument(
        "--priority", type=parse_priority, metavar="P", help="high | normal (default) | low"
    )
    enqueue.add_argument("--unique-key", metavar="KEY", help="dedupe key: one live job per key")
    enqueue.add_argument(
        "--timeout", type=_positive_float, metavar="SECONDS", help="job timeout in seconds"
    )
    enqueue.add_argument("--retries", type=_non_negative_int, metavar="N", help="max retries")
    enqueue.add_argument(
        "--wait",
        nargs="?",
        type=_positive_float,
        const=math.inf,
        metavar="SECONDS",
        help="wait for the result (optionally at most SECONDS)",
    )

    stats = command("stats", "show a queue's backlog, in-flight, delayed, dead jobs and workers")
    stats.add_argument("queue", help="queue: ns/name, or a bare name in --namespace")
    stats.add_argument(
        "--watch",
        "-w",
        nargs="?",
        type=_positive_float,
        const=2.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    stats.add_argument("--iterations", type=_positive_int, help=argparse.SUPPRESS)

    dead = command("dead", "list, replay or purge dead letters")
    dead_actions = dead.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    dead_actions.required = True
    dead_list = dead_actions.add_parser("list", help="list dead letters (oldest first)")
    _common_options(dead_list, top=False)
    dead_list.add_argument("queue")
    dead_list.add_argument(
        "--limit", type=_positive_int, default=100, metavar="N", help="at most N (default 100)"
    )
    for name, help_text in (
        ("replay", "re-enqueue dead letters as fresh jobs"),
        ("purge", "delete dead letters for good"),
    ):
        action = dead_actions.add_parser(name, help=help_text, description=help_text)
        _common_options(action, top=False)
        action.add_argument("queue")
        action.add_argument("ids", nargs="*", metavar="ID", help="job ids (see dead list)")
        action.add_argument("--all", action="store_true", help="every dead letter of the queue")
        if name == "purge":
            action.add_argument("--yes", "-y", action="store_true", help="do not ask to confirm")

    job = command("job", "show a job's state, attempts and result")
    job.add_argument("queue", help="queue: ns/name, or a bare name in --namespace")
    job.add_argument("job_id", metavar="JOB_ID")
    job.add_argument("--cancel", action="store_true", help="cancel the job")

    for name, help_text in (
        ("pause", "pause a queue: workers fetch nothing, enqueues still accepted"),
        ("resume", "resume a queue paused with bgq pause"),
    ):
        sub = command(name, help_text)
        sub.add_argument("queue", help="queue: ns/name, or a bare name in --namespace")

    schedules = command(
        "schedules",
        "list a queue's schedules (bgq schedules QUEUE), or fire one now "
        "(bgq schedules trigger QUEUE NAME)",
    )
    schedules.add_argument("words", nargs="+", metavar="QUEUE | trigger QUEUE NAME")

    jobs = command("jobs", "list a queue's jobs by state (bgq jobs list QUEUE)")
    jobs_actions = jobs.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    jobs_actions.required = True
    jobs_list = jobs_actions.add_parser("list", help="list jobs (paginated)")
    _common_options(jobs_list, top=False)
    jobs_list.add_argument("queue")
    jobs_list.add_argument(
        "--state", action="append", choices=LISTABLE, metavar="STATE",
        help=f"only this state (repeatable): {', '.join(LISTABLE)}",
    )  # fmt: skip
    jobs_list.add_argument("--task", metavar="TASK", help="only jobs of this task")
    jobs_list.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="page size (default 50)"
    )
    jobs_list.add_argument("--cursor", metavar="CURSOR", help="the cursor a previous page printed")

    gateway = command("gateway", "serve the HTTP enqueue gateway (see docs/gateway.md)")
    gateway.add_argument("--host", default=None, help="bind address (default 0.0.0.0)")
    gateway.add_argument(
        "--port", type=_port, default=None, help="port (default $BGQ_GATEWAY_PORT, else 8080)"
    )
    gateway.add_argument(
        "--console", action="store_true", default=None,
        help="also serve the web console under /console/ (default $BGQ_GATEWAY_CONSOLE; "
        "needs bgq[console]; configured like bgq console, by BGQ_CONSOLE_* variables)",
    )  # fmt: skip

    console = command("console", "serve the web console (see docs/console.md; bgq[console])")
    console.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    console.add_argument("--port", type=_port, default=None,
                         help="port (default $BGQ_CONSOLE_PORT, else 8090)")  # fmt: skip
    console.add_argument(
        "--queue", "-q", action="append", default=[], metavar="NS/NAME",
        help="a queue to show (repeatable; queues an operator decides for are found in Redis)",
    )  # fmt: skip
    return parser


# -- entry point -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run ``bgq``; returns the exit status (the console script passes it to ``sys.exit``)."""
    out, err = sys.stdout, sys.stderr
    try:
        args = build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace, IO[str]], int] = _COMMANDS[args.command]
        return handler(args, out)
    except CliError as exc:
        print(f"bgq: error: {exc.message}", file=err)
        return exc.code
    except KeyboardInterrupt:
        print("bgq: interrupted", file=err)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # --help / --version from argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


# -- plumbing shared by the commands ---------------------------------------------------------------


def _redis_url(args: argparse.Namespace) -> str:
    return str(args.redis_url or ClientSettings().redis_url)


def _queue(args: argparse.Namespace) -> QueueName:
    try:
        return QueueName.parse(args.queue, args.namespace)
    except InvalidQueueName as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


@contextlib.contextmanager
def _translate_errors(url: str) -> Iterator[None]:
    """Turn the expected failures of a command into one-line :class:`CliError`."""
    try:
        with redis_errors(url):
            yield
    except RedisUnavailable as exc:
        raise CliError(str(exc), EXIT_FAILED) from exc
    except JobNotFound as exc:
        raise CliError(str(exc), EXIT_NOT_FOUND) from exc
    except (ConfigError, PayloadError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    except BgqError as exc:
        raise CliError(str(exc), EXIT_FAILED) from exc


def _connect(args: argparse.Namespace) -> Client:
    """A producer client for ``--redis-url`` (``BGQ_REDIS_PASSWORD`` / ``_TLS_CA_FILE`` apply)."""
    try:
        return Client(_redis_url(args), namespace=args.namespace)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    except RedisUnavailable as exc:  # a cluster client reads the slot map at once
        raise CliError(str(exc), EXIT_FAILED) from exc


def _emit_json(out: IO[str], document: object, *, compact: bool = False) -> None:
    if compact:
        out.write(json.dumps(document, separators=(",", ":"), default=str) + "\n")
    else:
        out.write(json.dumps(document, indent=2, default=str) + "\n")
    out.flush()


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- bgq stats -------------------------------------------------------------------------------------


def render_stats(document: dict[str, Any]) -> str:
    """The human view of :func:`bgq.gateway.stats_document` (pure)."""
    workers = document["workers"]
    states: dict[str, int] = {}
    for w in workers:
        states[w["state"] or "?"] = states.get(w["state"] or "?", 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    head = format_fields(
        [
            ("queue", document["queue"]),
            ("backlog", document["backlog"]),
            ("in flight", document["in_flight"]),
            ("delayed", f"{document['delayed']} ({document['due']} due)"),
            ("dead", document["dead"]),
            (
                "oldest ready",
                format_duration(document["oldest_ready_age_seconds"])
                if document["backlog"]
                else "-",
            ),
            ("workers", f"{len(workers)} ({summary})" if workers else "0"),
        ]
    )
    if not workers:
        return head
    table = format_table(
        ["WORKER", "STATE", "IN FLIGHT", "CONCURRENCY", "OLDEST JOB", "HEARTBEAT", "VERSION"],
        [
            [
                w["consumer"],
                w["state"] or "?",
                w["in_flight"],
                w["concurrency"],
                format_duration(w["oldest_running_seconds"]),
                format_duration(w["heartbeat_age_seconds"]) + " ago",
                w["version"] or None,
            ]
            for w in workers
        ],
    )
    return f"{head}\n\n{table}"


def _cmd_stats(args: argparse.Namespace, out: IO[str]) -> int:
    queue = _queue(args)
    url = _redis_url(args)
    client = _connect(args)
    iterations = 0
    try:
        while True:
            with _translate_errors(url):
                now = _now_ms()
                demand = client.stats(queue)
            document = stats_document(str(queue), demand, now)
            if args.json:
                _emit_json(out, document, compact=args.watch is not None)
            else:
                if args.watch is not None and out.isatty():
                    out.write("\x1b[H\x1b[2J")
                if args.watch is not None:
                    stamp = time.strftime("%H:%M:%S")
                    out.write(f"every {format_duration(args.watch)}, at {stamp}\n")
                out.write(render_stats(document) + "\n")
                if args.watch is not None:
                    out.write("\n")
                out.flush()
            iterations += 1
            if args.watch is None or (args.iterations and iterations >= args.iterations):
                return EXIT_OK
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK if args.watch is not None else EXIT_INTERRUPTED
    finally:
        client.close()


# -- bgq enqueue -----------------------------------------------------------------------------------

_ENQUEUE_MESSAGES = {
    "enqueued": "enqueued job {id} on {queue}",
    "exists": "job {id} already exists on {queue}: nothing changed",
    "duplicate": "unique key held by job {id} on {queue}: nothing enqueued",
}


def _cmd_enqueue(args: argparse.Namespace, out: IO[str]) -> int:
    job_args = parse_json_option("--args", args.args, list)
    job_kwargs = parse_json_option("--kwargs", args.kwargs, dict)
    queue = _queue(args)
    url = _redis_url(args)
    options: dict[str, Any] = {}
    for name in ("job_id", "delay", "priority", "unique_key", "timeout", "retries"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    with _connect(args) as client, _translate_errors(url):
        job = client.enqueue_with(queue, args.task, args=job_args, kwargs=job_kwargs, **options)
        document: dict[str, Any] = {
            "id": job.id,
            "queue": job.queue,
            "status": job.status,
            "created": job.created,
        }
        if args.wait is None:
            if args.json:
                _emit_json(out, document)
            else:
                out.write(_ENQUEUE_MESSAGES.get(job.status, "{id}").format(**document) + "\n")
            return EXIT_OK
        if not args.json:
            out.write(_ENQUEUE_MESSAGES.get(job.status, "{id}").format(**document) + "\n")
            out.flush()
        timeout = args.wait if math.isfinite(args.wait) else 10 * 365 * 86400.0
        return _wait_and_report(
            client, queue, document, timeout=timeout, as_json=args.json, out=out
        )


def _wait_and_report(
    client: Client,
    queue: QueueName,
    document: dict[str, Any],
    *,
    timeout: float,
    as_json: bool,
    out: IO[str],
) -> int:
    """``--wait``: print the result (exit 0), or why there is none (exit 1 / 4)."""
    job_id = str(document["id"])
    try:
        result = client.wait(queue, job_id, timeout=timeout)
    except JobFailed as exc:
        if as_json:
            _emit_json(out, {**document, "state": "dead", "error": exc.error, "reason": exc.reason})
        raise CliError(str(exc), EXIT_FAILED) from exc
    except JobCancelled as exc:
        if as_json:
            _emit_json(out, {**document, "state": "cancelled"})
        raise CliError(str(exc), EXIT_FAILED) from exc
    except WaitTimeout as exc:
        raise CliError(f"{exc}; it goes on, see: bgq job {queue} {job_id}", EXIT_TIMEOUT) from exc
    if as_json:
        _emit_json(out, {**document, "state": "succeeded", "result": result})
    else:
        out.write(json.dumps(result, default=str) + "\n")
    return EXIT_OK


# -- bgq job ---------------------------------------------------------------------------------------


def _age(iso: str | None, now: float) -> str:
    if not iso:
        return "-"
    import datetime as dt

    moment = dt.datetime.fromisoformat(iso)
    return f"{iso}  ({format_duration(now - moment.timestamp())} ago)"


def render_job(document: dict[str, Any], now: float | None = None) -> str:
    """The human view of :func:`bgq.gateway.job_document` (pure given ``now``)."""
    now = time.time() if now is None else now
    retries = document["max_retries"]
    pairs: list[tuple[str, object]] = [
        ("id", document["id"]),
        ("queue", document["queue"]),
        ("task", document["task"]),
        (
            "state",
            document["state"] + (" (cancel requested)" if document["cancel_requested"] else ""),
        ),
        (
            "attempt",
            f"{document['attempt']}" + (f" of {retries + 1}" if retries is not None else ""),
        ),
        ("args", document["args"]),
        ("kwargs", document["kwargs"]),
        ("enqueued", _age(document["enqueued_at"], now)),
        ("started", _age(document["started_at"], now)),
        ("finished", _age(document["finished_at"], now)),
    ]
    progress = document.get("progress")
    if progress:
        line = f"{progress['fraction'] * 100:.0f}%"
        if progress["detail"]:
            line += f"  {progress['detail']}"
        pairs.append(("progress", f"{line}  (reported {_age(progress['updated_at'], now)})"))
    if document.get("checkpoint") is not None:
        pairs.append(("checkpoint", json.dumps(document["checkpoint"], default=str)))
    if document["lease_expiries"]:
        pairs.append(("lease expiries", document["lease_expiries"]))
    if document["state"] == "succeeded":
        pairs.append(("result", json.dumps(document["result"], default=str)))
    if document["reason"]:
        pairs.append(("reason", document["reason"]))
    if document["error"]:
        pairs.append(("error", document["error"]))
    text = format_fields(pairs)
    if document["traceback"]:
        text += "\n\ntraceback:\n" + document["traceback"].rstrip()
    return text


def _cmd_job(args: argparse.Namespace, out: IO[str]) -> int:
    queue = _queue(args)
    url = _redis_url(args)
    with _connect(args) as client, _translate_errors(url):
        if args.cancel:
            outcome = client.cancel(queue, args.job_id)
            if outcome == "missing":
                raise JobNotFound(f"job {args.job_id!r} not found in queue {queue}")
            cancelled = outcome in ("cancelled", "cancelling")
            if args.json:
                _emit_json(
                    out,
                    {
                        "id": args.job_id,
                        "queue": str(queue),
                        "outcome": outcome,
                        "cancelled": cancelled,
                    },
                )
            elif outcome == "cancelled":
                out.write(f"cancelled job {args.job_id}\n")
            elif outcome == "cancelling":
                out.write(
                    f"job {args.job_id} is running: its worker cancels it at the next "
                    "lease renewal\n"
                )
            else:
                out.write(f"job {args.job_id} had already finished ({outcome}): left alone\n")
            return EXIT_OK
        info: JobInfo = client.get(queue, args.job_id)
    document = job_document(info)
    if args.json:
        _emit_json(out, document)
    else:
        out.write(render_job(document) + "\n")
    return EXIT_OK


# -- bgq dead --------------------------------------------------------------------------------------


def dead_document(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter as JSON (``bgq dead list --json``)."""
    return {
        "entry_id": letter.entry_id,
        "job_id": letter.job_id,
        "task": letter.task,
        "reason": letter.reason,
        "error": letter.error,
        "dead_at": (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.dead_ms / 1000))
            if letter.dead_ms
            else None
        ),
        "traceback": letter.traceback,
    }


def render_dead(letters: Sequence[DeadLetter], now_ms: int) -> str:
    """The human table of dead letters (pure given ``now_ms``)."""
    if not letters:
        return "no dead letters"
    return format_table(
        ["JOB ID", "TASK", "REASON", "DIED", "ERROR"],
        [
            [
                letter.job_id or f"(entry {letter.entry_id})",
                letter.task or None,
                letter.reason or None,
                (format_duration((now_ms - letter.dead_ms) / 1000) + " ago")
                if letter.dead_ms
                else None,
                _short(letter.error) if letter.error else None,
            ]
            for letter in letters
        ],
    )


_ENTRY_ID = re.compile(r"^\d+-\d+$")


def _all_dead(client: Client, queue: QueueName) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    after: str | None = None
    while True:
        page = client.dead_letters(queue, limit=1000, after=after)
        letters.extend(page)
        if len(page) < 1000:
            return letters
        after = page[-1].entry_id


def _resolve_dead(client: Client, queue: QueueName, ids: Sequence[str]) -> list[str]:
    """Map job ids (or dead-letter entry ids) to entry ids; unknown ones are an error."""
    letters = _all_dead(client, queue)
    by_entry = {letter.entry_id: letter for letter in letters}
    by_job: dict[str, list[str]] = {}
    for letter in letters:
        by_job.setdefault(letter.job_id, []).append(letter.entry_id)
    entries: list[str] = []
    missing: list[str] = []
    for ident in ids:
        if ident in by_entry:
            entries.append(ident)
        elif ident in by_job:
            entries.extend(by_job[ident])
        else:
            missing.append(ident)
    if missing:
        raise CliError(
            f"no dead letter {', '.join(missing)} in queue {queue} (see: bgq dead list {queue}); "
            "nothing was changed",
            EXIT_NOT_FOUND,
        )
    return list(dict.fromkeys(entries))


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _cmd_dead(args: argparse.Namespace, out: IO[str]) -> int:
    queue = _queue(args)
    url = _redis_url(args)
    if args.action != "list":
        if args.all and args.ids:
            raise CliError("give job ids or --all, not both", EXIT_USAGE)
        if not args.all and not args.ids:
            raise CliError(f"dead {args.action}: give job ids, or --all", EXIT_USAGE)
    with _connect(args) as client, _translate_errors(url):
        if args.action == "list":
            letters = client.dead_letters(queue, limit=args.limit)
            if args.json:
                _emit_json(out, [dead_document(letter) for letter in letters])
            else:
                out.write(render_dead(letters, _now_ms()) + "\n")
            return EXIT_OK
        entries = None if args.all else _resolve_dead(client, queue, args.ids)
        if args.action == "replay":
            result = client.replay_dead(queue, entries)
            if args.json:
                _emit_json(
                    out,
                    {"queue": str(queue), "replayed": result.replayed, "skipped": result.skipped},
                )
            else:
                out.write(f"replayed {result.replayed} dead letter(s) on {queue}")
                if result.skipped:
                    out.write(f"; kept {result.skipped} (no envelope, or the job is live again)")
                out.write("\n")
            return EXIT_OK
        what = (
            f"all dead letters of {queue}" if args.all else f"{len(entries or [])} dead letter(s)"
        )
        if not args.yes and not _confirm(f"purge {what}? this cannot be undone"):
            raise CliError(f"not purging {what} without confirmation: add --yes", EXIT_USAGE)
        purged = client.purge_dead(queue, entries)
        if args.json:
            _emit_json(out, {"queue": str(queue), "purged": purged})
        else:
            out.write(f"purged {purged} dead letter(s) from {queue}\n")
        return EXIT_OK


# -- bgq pause / resume / schedules / jobs ---------------------------------------------------------


def _cmd_pause(args: argparse.Namespace, out: IO[str]) -> int:
    from bgq.control import pause_sources, set_paused

    queue = _queue(args)
    with _connect(args) as client, _translate_errors(_redis_url(args)):
        paused = set_paused(client.redis, queue, args.command == "pause", "cli")
        sources = pause_sources(client.redis, queue)
    if args.json:
        _emit_json(out, {"queue": str(queue), "paused": paused, "by": sources})
    elif paused:
        by = " and ".join("spec.paused" if s == "spec" else "bgq pause" for s in sources)
        out.write(f"{queue} is paused (by {by}): workers fetch nothing; enqueues are accepted\n")
    else:
        out.write(f"{queue} is running: workers fetch again\n")
    return EXIT_OK


def render_schedules(records: Sequence[dict[str, Any]], now: float) -> str:
    """The human view of ``bgq schedules`` (pure)."""
    if not records:
        return "no schedules (spec.schedules is empty, or the operator has not seen it yet)"

    def when(value: object) -> str:
        if not isinstance(value, int | float):
            return "-"
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
        delta = value - now
        return f"{at} ({'in ' if delta >= 0 else ''}{format_duration(abs(delta))}" + (
            ")" if delta >= 0 else " ago)"
        )

    rows = [
        [
            r["name"], r.get("cron", ""), r.get("timeZone", "UTC"), r.get("task", ""),
            "suspended" if r.get("suspend") else when(r.get("nextTick")),
            when(r.get("lastTick")) if r.get("lastOutcome") else "-",
            r.get("lastOutcome") or "-", r.get("lastJobId") or "-", r.get("missed") or 0,
        ]
        for r in records
    ]  # fmt: skip
    return format_table(
        ["NAME", "CRON", "ZONE", "TASK", "NEXT", "LAST", "OUTCOME", "LAST JOB", "MISSED"], rows
    )


def _cmd_schedules(args: argparse.Namespace, out: IO[str]) -> int:
    from bgq.control import ScheduleNotFoundError, read_schedules, trigger

    words = list(args.words)
    if words[0] == "trigger" and len(words) == 3:
        args.queue = words[1]
        queue = _queue(args)
        with _connect(args) as client, _translate_errors(_redis_url(args)):
            try:
                job_id = trigger(client, queue, words[2])
            except ScheduleNotFoundError as exc:
                raise CliError(str(exc), EXIT_NOT_FOUND) from exc
        if args.json:
            _emit_json(out, {"queue": str(queue), "schedule": words[2], "id": job_id})
        else:
            out.write(f"fired schedule {words[2]} of {queue} now: job {job_id}\n")
        return EXIT_OK
    if len(words) != 1:
        raise CliError("usage: bgq schedules QUEUE | bgq schedules trigger QUEUE NAME", EXIT_USAGE)
    args.queue = words[0]
    queue = _queue(args)
    with _connect(args) as client, _translate_errors(_redis_url(args)):
        records = read_schedules(client.redis, queue)
    if args.json:
        _emit_json(out, {"queue": str(queue), "schedules": records})
    else:
        out.write(render_schedules(records, time.time()) + "\n")
    return EXIT_OK


def _cmd_jobs(args: argparse.Namespace, out: IO[str]) -> int:
    queue = _queue(args)
    with _connect(args) as client, _translate_errors(_redis_url(args)):
        page = client.list_jobs(
            queue, states=args.state, task=args.task, limit=args.limit, cursor=args.cursor
        )
    if args.json:
        _emit_json(out, {"queue": str(queue), "jobs": [j.to_dict() for j in page.jobs],
                         "cursor": page.cursor})  # fmt: skip
        return EXIT_OK
    rows = [
        [j.id, j.state, j.task, j.attempt or "-", j.band if j.band >= 0 else "-",
         j.reason or (time.strftime("%H:%M:%S", time.gmtime(j.due_ms / 1000)) if j.due_ms else "")]
        for j in page.jobs
    ]  # fmt: skip
    out.write(format_table(["ID", "STATE", "TASK", "ATTEMPT", "BAND", "DUE/REASON"], rows) + "\n")
    if page.cursor:
        out.write(f"more: bgq jobs list {queue} --cursor {page.cursor}\n")
    return EXIT_OK


# -- bgq worker / bgq gateway ----------------------------------------------------------------------


def _cmd_worker(args: argparse.Namespace, out: IO[str]) -> int:
    if args.redis_url:
        os.environ["BGQ_REDIS_URL"] = args.redis_url
    if args.namespace:
        os.environ["BGQ_NAMESPACE"] = args.namespace
    argv: list[str] = []
    if args.module:
        argv.append(args.module)
    if args.queue:
        argv += ["--queue", args.queue]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    try:
        worker_main = importlib.import_module("bgq.worker").main
    except (ImportError, AttributeError) as exc:  # pragma: no cover - a broken install
        raise CliError(f"the worker runtime cannot be imported: {exc}", EXIT_FAILED) from exc
    with _translate_errors(_redis_url(args)):
        return int(worker_main(argv) or 0)


def _gateway_console(args: argparse.Namespace) -> bool:
    """``--console``, else ``BGQ_GATEWAY_CONSOLE`` (true/false)."""
    if args.console:
        return True
    value = os.environ.get("BGQ_GATEWAY_CONSOLE", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise CliError(f"BGQ_GATEWAY_CONSOLE must be true or false, got {value!r}", EXIT_USAGE)


def _console_module() -> Any:
    """``bgq.console``, or the one-line error naming the extra (it is optional)."""
    try:
        return importlib.import_module("bgq.console")
    except ImportError as exc:
        raise CliError(
            f"the console needs its extra: pip install 'bgq[console]' ({exc})", EXIT_FAILED
        ) from None


def _cmd_gateway(args: argparse.Namespace, out: IO[str]) -> int:
    import logging

    from bgq.gateway import serve

    # before anything starts: a missing extra is a one-line error, not a traceback
    console = _console_module() if _gateway_console(args) else None
    logging.basicConfig(
        level=os.environ.get("BGQ_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with _translate_errors(_redis_url(args)):
        apps = None
        if console is not None:
            config = console.config_from_env(_redis_url(args))
            apps = {"/console": console.create_app(config)}
        asyncio.run(
            serve(
                redis_url=_redis_url(args), host=args.host or "0.0.0.0", port=args.port, apps=apps
            )
        )
    return EXIT_OK


def _cmd_console(args: argparse.Namespace, out: IO[str]) -> int:
    import logging

    console = _console_module()
    logging.basicConfig(
        level=os.environ.get("BGQ_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    port = args.port or int(os.environ.get("BGQ_CONSOLE_PORT", "") or 8090)
    with _translate_errors(_redis_url(args)):
        config = console.config_from_env(_redis_url(args), args.queue)
        console.serve(config, host=args.host, port=port)
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, IO[str]], int]] = {
    "worker": _cmd_worker,
    "pause": _cmd_pause,
    "resume": _cmd_pause,
    "schedules": _cmd_schedules,
    "jobs": _cmd_jobs,
    "enqueue": _cmd_enqueue,
    "stats": _cmd_stats,
    "job": _cmd_job,
    "dead": _cmd_dead,
    "gateway": _cmd_gateway,
    "console": _cmd_console,
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
