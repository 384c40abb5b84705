"""Gateway HTTP stack benchmark: enqueue requests/s and latency at 1, 16 and 64 connections.

    .venv/bin/pip install 'starlette>=1.10,<2' 'uvicorn[standard]>=0.54,<1'   # the ASGI rows
    .venv/bin/python bench/gateway_http.py [--seconds 5] [--before /work/main/worker]

Rows, each one `POST /v1/queues/bench/http/jobs` with a bearer token and a small JSON body, all
against the same private redis-server, one after the other in one run on one machine:

* ``built-in`` — ``bgq gateway`` of this tree (the hardened ``bgq.httpserver``);
* ``built-in (before)`` — the same command run from another tree (``--before``, e.g. a checkout of
  main before the hardening), only when given;
* ``starlette+uvicorn`` — the same enqueue handler (same pydantic model, same
  :mod:`bgq.safejson` parsing, same ``RedisBackend``) as a Starlette route under uvicorn with
  httptools on the asyncio loop, and again with uvicorn's h11 parser; ``uvloop`` is not used
  so that the rows differ only in the HTTP stack.

The load generator is this process: N asyncio connections with keep-alive, each sending one
request and reading the whole answer before the next (closed loop), for ``--seconds`` per level
after a 1 s warm-up. Latency is per request, as seen by the generator. Python generates the load,
so the absolute figures are bounded by it on small machines; the rows are comparable because the
generator is the same. On a shared, loaded machine wall-clock figures are noisy; the last column,
the server process's own CPU time (user + system, from /proc) per request, is the robust
comparison of the stacks' cost. Every answer must be ``201``; anything else fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from throughput import redis_server

TOKEN = "bench-token"
PATH = "/v1/queues/bench/http/jobs"
BODY = b'{"task":"bench_noop","args":[1,"two"],"kwargs":{"three":3}}'
LEVELS = (1, 16, 64)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the ASGI row: the same handler as a Starlette route ----------------------------------------


def starlette_app(redis_url: str) -> Any:
    """The gateway's enqueue route on Starlette (validation and backend exactly as bgq's)."""
    import hmac

    from pydantic import ValidationError
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from bgq import safejson
    from bgq.client import AsyncClient
    from bgq.gateway import EnqueueRequest, RedisBackend

    backend = RedisBackend(AsyncClient(redis_url), redis_url)
    expected = f"Bearer {TOKEN}".encode()

    async def enqueue(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            job = EnqueueRequest.model_validate(safejson.loads(await request.body()))
        except (ValueError, ValidationError) as exc:
            return JSONResponse({"error": "invalid_request", "message": str(exc)}, 400)
        queue = f"{request.path_params['namespace']}/{request.path_params['name']}"
        outcome = await backend.enqueue(queue, job)
        return JSONResponse(
            {"id": outcome.id, "queue": queue, "status": outcome.status,
             "created": outcome.created},
            status_code=201 if outcome.created else 200,
            headers={"Cache-Control": "no-store"},
        )

    return Starlette(routes=[Route("/v1/queues/{namespace}/{name}/jobs", enqueue,
                                   methods=["POST"])])


def serve_starlette(redis_url: str, port: int, http: str) -> None:
    import uvicorn

    uvicorn.run(
        starlette_app(redis_url), host="127.0.0.1", port=port, http=http, loop="asyncio",
        log_level="warning", access_log=False, lifespan="off",
    )


# -- servers -----------------------------------------------------------------------------------


def _server_command(kind: str, redis_url: str, port: int, before: str | None) -> tuple[
    list[str], dict[str, str]
]:
    env = {**os.environ, "BGQ_REDIS_URL": redis_url, "BGQ_GATEWAY_TOKEN": TOKEN,
           "BGQ_LOG_LEVEL": "WARNING"}
    if kind.startswith("built-in"):
        if kind == "built-in (before)" and before:
            env["PYTHONPATH"] = before
        code = "import sys; from bgq.cli import main; sys.exit(main(sys.argv[1:]))"
        return [sys.executable, "-c", code, "gateway", "--host", "127.0.0.1", "--port",
                str(port)], env
    http = "h11" if kind.endswith("h11") else "httptools"
    return [sys.executable, __file__, "--serve", http, "--redis-url", redis_url, "--port",
            str(port)], env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(kind: str, redis_url: str, before: str | None) -> Iterator[tuple[int, int]]:
    port = _free_port()
    cmd, env = _server_command(kind, redis_url, port, before)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{kind}: server did not start")
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# -- load generator ----------------------------------------------------------------------------

REQUEST = (
    f"POST {PATH} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
    f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
).encode() + BODY


async def _connection(
    port: int, stop_at: float, record_from: float, out: list[float], counted: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    try:
        while (now := loop.time()) < stop_at:
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 201"):
                raise SystemExit(f"unexpected answer: {head[:200]!r}")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            counted[0] += 1
            if now >= record_from:
                out.append(loop.time() - now)
    finally:
        writer.close()


async def load(port: int, pid: int, connections: int, seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    record_from = start + 1.0
    stop_at = record_from + seconds
    latencies: list[float] = []
    counted = [0]
    cpu_before = cpu_seconds(pid)
    await asyncio.gather(
        *(_connection(port, stop_at, record_from, latencies, counted) for _ in range(connections))
    )
    cpu = cpu_seconds(pid) - cpu_before
    latencies.sort()
    return {
        "cpu_ms": 1000 * cpu / counted[0],
        "rps": len(latencies) / seconds,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level")
    p.add_argument("--before", help="a tree's worker/ dir to run as the 'built-in (before)' row")
    p.add_argument("--only", nargs="*", help="run only these rows")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--redis-url", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve_starlette(args.redis_url, args.port, args.serve)
        return 0
    kinds = ["built-in"]
    if args.before:
        kinds.append("built-in (before)")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        kinds += ["starlette+uvicorn httptools", "starlette+uvicorn h11"]
    except ImportError:
        print("starlette/uvicorn not installed: ASGI rows skipped", file=sys.stderr)
    if args.only:
        kinds = [k for k in kinds if k in args.only]
    print(f"enqueue POST {PATH}, {len(BODY)} B body, bearer token, keep-alive; "
          f"{args.seconds:g} s per level after 1 s warm-up; cpus={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'stack':32} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'server CPU ms/req':>18}")
    with redis_server() as url:
        for kind in kinds:
            with server(kind, url, args.before) as (port, pid):
                for level in LEVELS:
                    r = asyncio.run(load(port, pid, level, args.seconds))
                    print(f"{kind:32} {level:>5} {r['rps']:>8.0f} {r['p50']:>8.2f} "
                          f"{r['p99']:>8.2f} {r['cpu_ms']:>18.3f}", flush=True)
            redis.Redis.from_url(url).flushall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
