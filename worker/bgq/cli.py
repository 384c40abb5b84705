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
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CliError",
    "build_parser",
    "format_duration",
    "format_table",
    "main",
    "parse_json_option",
    "parse_priority",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
PRIORITIES = {"high": 0, "normal": 1, "low": 2}


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
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(
            f"{option}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
            EXIT_USAGE,
        ) from err
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

    gateway = command("gateway", "serve the HTTP enqueue gateway (see docs/gateway.md)")
    gateway.add_argument("--host", default=None, help="bind address (default 0.0.0.0)")
    gateway.add_argument(
        "--port", type=_port, default=None, help="port (default $BGQ_GATEWAY_PORT, else 8080)"
    )
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


def _redis_url(args: argparse.Namespace) -> str:
    return str(args.redis_url or os.environ.get("BGQ_REDIS_URL") or DEFAULT_REDIS_URL)


_COMMANDS: dict[str, Callable[[argparse.Namespace, IO[str]], int]] = {}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
