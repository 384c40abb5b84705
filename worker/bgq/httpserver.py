"""A small, dependency-free, hardened asyncio HTTP/1.1 server.

bgq serves a handful of tiny endpoints: the worker's and operator's ``/livez``, ``/readyz`` and
``/metrics``, and the enqueue gateway (``bgq.gateway``). A web framework would bloat every worker
image, and the ASGI servers measured for the gateway (uvicorn, hypercorn; see
``bench/gateway_http.py`` and docs/gateway.md) leave the resource limits below to the
application anyway. So this module implements just enough of HTTP/1.1 (RFC 9112) on
``asyncio.start_server``, and is strict about it, because the gateway is reachable from every pod
in the cluster:

* **Route and authorize before the body.** The request head is parsed, the route looked up
  (``404``/``405``) and the ``guard`` (e.g. the gateway's token check) asked *before* a single
  body byte is read or buffered, and before ``100 Continue`` is sent.
* **Bounded resources.** At most ``max_connections`` connections (default: 1024, and never more
  than half the process's file-descriptor limit, so the accept loop does not run into EMFILE);
  one more is answered ``503`` and closed. Request bodies being buffered share a
  ``max_buffered_bytes`` budget; a body that does not fit is answered ``503`` + ``Retry-After``.
  Request line plus headers over ``max_header_bytes`` → ``431``; a body over ``max_body_bytes``
  → ``413`` (from ``Content-Length`` before reading, or while decoding chunks).
* **Deadlines.** A new connection has ``header_timeout`` (10 s) to send a complete request head,
  and every request body ``read_timeout`` to arrive: otherwise ``408`` and close (slowloris,
  silent connections). An idle keep-alive connection is closed after ``idle_timeout``. A client
  that does not read its response is cut off after ``write_timeout``.
* **Strict parsing** (no parser differential behind a proxy): control bytes (NUL, bare CR or LF,
  ...) anywhere in the head, obsolete line folding, whitespace before a header colon, a missing or
  duplicated ``Host`` (HTTP/1.1), a ``Content-Length`` that is not plain ASCII digits, conflicting
  framing (``Content-Length`` with ``Transfer-Encoding``) and transfer codings other than
  ``chunked`` are all ``400``. Chunked request bodies are decoded (within the size limit).
* Every protocol error is a ``4xx`` (``505`` for an unknown HTTP version) and closes the
  connection; a handler exception is a logged ``500`` and never takes the server down. Refused
  connections are logged at most once per 10 s (no log storm under attack).
* Keep-alive (the HTTP/1.1 default; ``Connection: close`` honoured; HTTP/1.0 closes unless asked
  to keep alive), ``Expect: 100-continue``, ``HEAD`` answered by the ``GET`` handler without a
  body, routing by method and path pattern (``/v1/queues/{namespace}/{name}/jobs``).
* **Prefix mounts and streaming answers.** ``mount("/console", handler)`` hands every request
  under ``/console/`` (any method; the bare prefix is redirected ``308`` to ``/console/``) to one
  handler, after the same parsing, limits and guard as any route. A handler may answer a
  :class:`StreamingResponse`: its body is written as it is produced, each piece flushed under
  ``write_timeout`` (``chunked`` when its length is unknown; such a stream ends the connection,
  so the server may watch the socket and tell the handler, by ``Request.disconnected``, that
  the client left). :mod:`bgq.asgibridge` builds on this to serve an ASGI application.
* ``stop()`` closes the listener, ends streaming answers at once (``Request.disconnected``; a
  server-sent-events stream never finishes by itself), lets requests in progress finish for a
  short grace period, then cancels what is left and closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

__all__ = [
    "ErrorResponse",
    "Guard",
    "Handler",
    "HttpServer",
    "MountHandler",
    "Request",
    "Response",
    "StreamingResponse",
]

log = logging.getLogger("bgq.http")

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_BUFFERED_BYTES = 32 * 1024 * 1024
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_WRITE_TIMEOUT = 10.0

# All regexes here are used with fullmatch (``$`` would accept a trailing newline).
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(r"[0-9A-Fa-f]{1,15}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""Bytes never allowed in a request line or header line (HTAB is allowed in values)."""
_TARGET = re.compile(r"[\x21-\x7e]+")
_CANONICAL = {
    "host": "Host",
    "content-length": "Content-Length",
    "transfer-encoding": "Transfer-Encoding",
}
"""Headers that must not repeat (framing and routing depend on them)."""


@dataclass
class Request:
    """One parsed HTTP request. Header names are lower-cased; ``path`` is percent-decoded.

    ``route`` is the matched route pattern (``""`` before routing; the prefix for a mount).
    ``raw_path`` and ``query_string`` are the request target as sent (before decoding),
    ``client`` and ``server`` the socket's peer and local address: an ASGI scope needs them.
    ``disconnected`` is set once the answer can no longer be delivered or must end: the client
    left during a streaming answer, the answer was written, or the server is stopping.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    path_params: dict[str, str]
    route: str = ""
    raw_path: str = ""
    query_string: str = ""
    http_version: str = "1.1"
    client: tuple[str, int] | None = None
    server: tuple[str, int] | None = None
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Response:
    """What a handler returns. ``Content-Length`` and ``Connection`` are added by the server."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: object, status: int = 200) -> Response:
        """A JSON response (compact UTF-8, with a trailing newline for curl users)."""
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        return cls(status=status, body=body, content_type="application/json")


@dataclass
class StreamingResponse:
    """An answer whose body is produced while it is written (a mount's handler may return one).

    ``headers`` is a list (``Set-Cookie`` may repeat) and carries ``Content-Type``; the server
    sets the framing itself: ``Content-Length: length`` when the length is known up front, else
    ``Transfer-Encoding: chunked`` (HTTP/1.0: none) and ``Connection: close``. Each piece of
    ``body`` is flushed before the next is asked for. The server closes ``body`` (``aclose``)
    when it stops reading early: the client left, a write timed out, the server stops.
    """

    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    length: int | None = None


Handler = Callable[[Request], Awaitable[Response]]
MountHandler = Callable[[Request], Awaitable[Response | StreamingResponse]]
"""Serves every request under a prefix (:meth:`HttpServer.mount`)."""
ErrorResponse = Callable[[int, str], Response]
"""Builds the body of the server's own errors (400, 404, 405, 408, 413, 431, 503, ...)."""
Guard = Callable[[Request], Awaitable[Response | None]]
"""Called after routing with the body not yet read (``Request.body == b""``): return a Response
(e.g. ``401``) to answer without reading the body, or ``None`` to go on."""


class _HttpError(Exception):
    """A protocol-level problem: answered with ``status``, then the connection is closed."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class _Route:
    method: str
    pattern: str
    parts: list[tuple[bool, str]]  # (is_param, literal text or parameter name)
    handler: MountHandler

    def match(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.parts):
            return None
        params: dict[str, str] = {}
        for (is_param, text), segment in zip(self.parts, segments, strict=True):
            if is_param:
                if not segment:
                    return None
                params[text] = segment
            elif text != segment:
                return None
        return params


@dataclass
class _Head:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    chunked: bool
    length: int  # Content-Length, 0 when absent or chunked


def _split_path(path: str) -> list[str]:
    """Split ``/a/b%2Fc/d`` into segments ``["a", "b/c", "d"]``, decoding after splitting."""
    return [unquote(part) for part in path.split("/")[1:]]


def _address(info: object) -> tuple[str, int] | None:
    """``(host, port)`` of a socket address (IPv6 addresses carry two more fields)."""
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None


def _plain(status: int, message: str) -> Response:
    return Response(status=status, body=(message + "\n").encode())


class _Budget:
    """Bytes of request bodies buffered right now, across all connections."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class _RateLimit:
    """Lets one event through per ``interval`` seconds and counts the ones it holds back."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -interval
        self._suppressed = 0

    def allow(self) -> int | None:
        """``None``: drop this event; else how many were dropped since the last one let through."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return None
        dropped, self._last, self._suppressed = self._suppressed, now, 0
        return dropped

    def warning(self, message: str) -> None:
        """Log ``message`` as a warning, at most once per interval."""
        dropped = self.allow()
        if dropped is not None:
            suffix = f" ({dropped} more since the last report)" if dropped else ""
            log.warning("%s%s", message, suffix)


def _fd_cap(requested: int) -> int:
    """``requested``, but well inside the soft RLIMIT_NOFILE.

    Half the limit, less the 64 sockets asyncio may accept in one batch before a refused
    connection is closed (its accept loop takes up to ``backlog`` = 100 per wake-up); the rest is
    for Redis, files and the process itself. 256 fds → 64 connections, 4096 → the default 1024.
    """
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - every Linux has it
        return requested
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return requested
    return min(requested, max(8, soft // 2 - 64))


class _AcceptErrorFilter(logging.Filter):
    """Rate-limits asyncio's "socket.accept() out of system resource" error (EMFILE/ENFILE).

    asyncio logs it with a traceback on every failed accept; at the fd limit under a connection
    flood that is a log storm. One report per 10 s is kept, the rest are counted and dropped.
    """

    def __init__(self) -> None:
        super().__init__()
        self._limit = _RateLimit()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("socket.accept() out of system resource"):
            return True
        dropped = self._limit.allow()
        if dropped is None:
            return False
        if dropped:
            record.msg = f"{record.msg} ({dropped} more since the last report)"
        record.exc_info = None
        return True


_ACCEPT_FILTER = _AcceptErrorFilter()


class HttpServer:
    """An asyncio HTTP/1.1 server with a tiny router.

    Usage::

        server = HttpServer("127.0.0.1", 8080)
        server.route("GET", "/livez", livez)
        await server.start()
        ...
        await server.stop()

    ``error_response(status, message)`` shapes the server's own error answers (plain text by
    default; the gateway answers JSON). ``guard`` runs after routing, before the body is read.
    ``default_headers`` are added to every answer (security headers) unless the handler set them.
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        stop_grace: float = 5.0,
        error_response: ErrorResponse | None = None,
        guard: Guard | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.max_connections = _fd_cap(max_connections)
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.stop_grace = stop_grace
        self._error = error_response or _plain
        self._guard = guard
        self._default_headers = dict(default_headers or {})
        self._budget = _Budget(max(max_buffered_bytes, max_body_bytes))
        self._refusals = _RateLimit()
        self._routes: list[_Route] = []
        self._mounts: list[_Route] = []
        self._answering: set[asyncio.Event] = set()  # Request.disconnected of requests in hand
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()  # connections in the middle of a request
        self._stopping = False

    # -- configuration -------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """Serve ``method pattern`` with ``handler``.

        ``pattern`` is an absolute path whose whole segments may be ``{param}`` placeholders; they
        match one non-empty segment and land, percent-decoded, in ``Request.path_params``.
        Routes are tried in registration order.
        """
        method = method.upper()
        if not _TOKEN.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern must start with '/': {pattern!r}")
        parts: list[tuple[bool, str]] = []
        for segment in pattern.split("/")[1:]:
            param = _PARAM.fullmatch(segment)
            if param:
                parts.append((True, param.group(1)))
            elif "{" in segment or "}" in segment:
                raise ValueError(
                    f"route pattern {pattern!r}: a placeholder must be a whole segment like "
                    "'{name}'"
                )
            else:
                parts.append((False, segment))
        self._routes.append(_Route(method, pattern, parts, handler))

    def mount(self, prefix: str, handler: MountHandler) -> None:
        """Serve every request under ``prefix + "/"`` (any method) with ``handler``.

        Routes are tried first. ``prefix`` itself is answered ``308`` to ``prefix + "/"`` (with
        the query kept). Matching is on the raw path, so ``/console%2F`` is not under
        ``/console/``. The guard sees ``Request.route == prefix``.
        """
        if not prefix.startswith("/") or prefix.endswith("/") or not _TARGET.fullmatch(prefix):
            raise ValueError(f"mount prefix must be like '/console': {prefix!r}")
        if any(c in prefix for c in "?#%{}"):
            raise ValueError(f"mount prefix must be a plain path: {prefix!r}")
        self._mounts.append(_Route("*", prefix, [], handler))

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``). Raises if the server is not started."""
        if self._port is None:
            raise RuntimeError("HttpServer is not started")
        return self._port

    @property
    def buffered_bytes(self) -> int:
        """Request-body bytes buffered right now (all connections)."""
        return self._budget.used

    @property
    def connections(self) -> int:
        """Open connections right now."""
        return len(self._connections)

    async def start(self) -> None:
        """Bind and start accepting connections. Raises ``OSError`` if the port is taken."""
        if self._server is not None:
            raise RuntimeError("HttpServer is already started")
        self._stopping = False
        asyncio_log = logging.getLogger("asyncio")
        if _ACCEPT_FILTER not in asyncio_log.filters:
            asyncio_log.addFilter(_ACCEPT_FILTER)
        self._server = await asyncio.start_server(
            self._on_connect,
            self.host,
            self._requested_port,
            limit=max(self.max_header_bytes, 1024) + 1024,
        )
        sockets = self._server.sockets
        self._port = int(sockets[0].getsockname()[1]) if sockets else self._requested_port
        log.debug("http server listening on %s:%s", self.host, self._port)

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (``stop_grace``), close the rest."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        for event in list(self._answering):  # streams end now; plain handlers do not look
            event.set()
        # Idle keep-alive connections are closed now; busy ones get the grace period.
        for task in self._connections - self._busy:
            task.cancel()
        if self._busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*self._busy, return_exceptions=True), self.stop_grace
                )
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.wait_closed()
        self._port = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- connection handling -------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            await self._refuse(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_connection(reader, writer, task)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:  # pragma: no cover - a bug here must not kill the server
            log.exception("http connection failed")
        finally:
            self._connections.discard(task)
            self._busy.discard(task)
            await self._close(writer)

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Over the connection cap: a canned 503 without reading anything, then close."""
        self._refusals.warning(
            f"http: {self.max_connections} connections open (the cap): refusing new ones with 503"
        )
        response = self._error(503, "too many connections, retry later")
        response.headers["Retry-After"] = "1"
        with contextlib.suppress(Exception):
            writer.write(self._encode(response, keep_alive=False))
            if writer.can_write_eof():
                writer.write_eof()
        await self._close(writer)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        """Close, flushing briefly; a peer that does not take the last bytes is aborted."""
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except TimeoutError:
            writer.transport.abort()
        except Exception:
            pass

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        first = True
        while not self._stopping:
            try:
                head = await self._read_head(reader, first)
            except _HttpError as err:
                await self._write(writer, self._error_for(err), keep_alive=False)
                return
            if head is None:
                return  # the client closed (or stayed idle) between requests
            first = False
            self._busy.add(task)
            try:
                keep_alive = await self._handle_one(head, reader, writer)
            finally:
                self._busy.discard(task)
            if not keep_alive:
                return

    def _error_for(self, err: _HttpError) -> Response:
        response = self._error(err.status, err.message)
        response.headers.update(err.headers)
        return response

    async def _read_head(self, reader: asyncio.StreamReader, first: bool) -> bytes | None:
        """Read the request line and headers; ``None`` on a clean close or idle keep-alive.

        A new connection has ``header_timeout`` for its whole first head; on a keep-alive
        connection the wait for the next request's first byte is ``idle_timeout``, then the rest
        of the head has ``header_timeout``.
        """
        prefix = b""
        if not first:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    prefix = await reader.read(1)
            except TimeoutError:
                return None
            if not prefix:
                return None
        try:
            async with asyncio.timeout(self.header_timeout):
                rest = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError as err:
            raise _HttpError(408, "request header timeout") from err
        except asyncio.LimitOverrunError as err:
            raise _HttpError(431, "request header fields too large") from err
        except asyncio.IncompleteReadError as err:
            if not (prefix + err.partial).strip():
                return None
            raise
        head = prefix + rest
        if len(head) > self.max_header_bytes:
            raise _HttpError(431, "request header fields too large")
        return head

    async def _handle_one(
        self, raw_head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request whose head was read; returns whether to keep the connection."""
        try:
            head = self._parse_head(raw_head)
        except _HttpError as err:
            await self._write(writer, self._error_for(err), keep_alive=False)
            return False

        connection = head.headers.get("connection", "").lower()
        if head.version == "HTTP/1.0":
            keep_alive = "keep-alive" in connection
        else:
            keep_alive = "close" not in connection
        has_body = head.chunked or head.length > 0

        path, _, query_string = head.target.partition("?")
        request = Request(
            method=head.method,
            path=unquote(path),
            query=dict(parse_qsl(query_string, keep_blank_values=True)),
            headers=head.headers,
            body=b"",
            path_params={},
            raw_path=path,
            query_string=query_string,
            http_version=head.version.removeprefix("HTTP/"),
            client=_address(writer.get_extra_info("peername")),
            server=_address(writer.get_extra_info("sockname")),
        )
        found = self._find_route(request, path)
        early: Response | None = found if isinstance(found, Response) else None
        if early is None and self._guard is not None:
            early = await self._call_guard(request)
        if early is not None:
            # Answered without reading the body: a connection with an unread body is closed.
            keep_alive = keep_alive and not has_body and not self._stopping
            await self._write(writer, early, keep_alive=keep_alive, head_only=head.method == "HEAD")
            if has_body:
                await self._linger(reader, writer)
            return keep_alive
        assert isinstance(found, _Route)

        taken = 0
        self._answering.add(request.disconnected)
        try:
            try:
                try:
                    request.body, taken = await self._read_body(head, reader, writer)
                except _HttpError as err:
                    await self._write(writer, self._error_for(err), keep_alive=False)
                    await self._linger(reader, writer)
                    return False
                response = await self._call(found, request)
            finally:
                self._budget.give(taken)
            keep_alive = keep_alive and not self._stopping
            head_only = head.method == "HEAD"
            if isinstance(response, StreamingResponse):
                return await self._stream(
                    reader, writer, request, response, keep_alive=keep_alive, head_only=head_only
                )
            await self._write(writer, response, keep_alive=keep_alive, head_only=head_only)
            return keep_alive
        finally:
            self._answering.discard(request.disconnected)
            request.disconnected.set()

    def _parse_head(self, raw: bytes) -> _Head:
        text = raw.decode("latin-1")  # latin-1 decodes any byte; bytes >= 0x80 are obs-text
        lines = text[: -len("\r\n\r\n")].split("\r\n")
        # RFC 9112 2.2: ignore at least one empty line before the request line.
        while lines and not lines[0]:
            lines.pop(0)
        if not lines:
            raise _HttpError(400, "empty request")
        request_line = lines[0]
        if _CONTROL.search(request_line) or "\t" in request_line:
            raise _HttpError(400, "control character in the request line")
        parts = request_line.split(" ")
        if len(parts) != 3:
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        if not _TOKEN.fullmatch(method):
            raise _HttpError(400, "malformed method")
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            if re.fullmatch(r"HTTP/[0-9]\.[0-9]", version):
                raise _HttpError(505, "HTTP version not supported")
            raise _HttpError(400, "malformed HTTP version")
        if not _TARGET.fullmatch(target):
            raise _HttpError(400, "malformed request target")
        if target.startswith(("http://", "https://")):  # absolute-form: keep only the path
            after_scheme = target.split("://", 1)[1]
            slash = after_scheme.find("/")
            target = after_scheme[slash:] if slash >= 0 else "/"
        if not target.startswith("/"):
            raise _HttpError(400, "request target must be an absolute path")
        headers: dict[str, str] = {}
        hosts = 0
        for line in lines[1:]:
            if not line:
                raise _HttpError(400, "empty header line")
            if _CONTROL.search(line):
                raise _HttpError(400, "control character in a header line")
            if line[0] in " \t":
                raise _HttpError(400, "obsolete header line folding")
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise _HttpError(400, "malformed header line")
            key = name.lower()
            value = value.strip(" \t")
            if key == "host":
                hosts += 1
            if key in headers:
                if key in _CANONICAL:
                    raise _HttpError(400, f"more than one {_CANONICAL[key]} header")
                headers[key] = f"{headers[key]}, {value}"
            else:
                headers[key] = value
        if hosts > 1:
            raise _HttpError(400, "more than one Host header")
        if version == "HTTP/1.1" and hosts == 0:
            raise _HttpError(400, "missing Host header")
        chunked, length = self._framing(version, headers)
        return _Head(method, target, version, headers, chunked, length)

    def _framing(self, version: str, headers: dict[str, str]) -> tuple[bool, int]:
        """``(chunked, content_length)`` of the body, refusing ambiguous framing."""
        encoding = headers.get("transfer-encoding")
        raw_length = headers.get("content-length")
        if encoding is not None:
            if version == "HTTP/1.0":
                raise _HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if raw_length is not None:
                raise _HttpError(400, "both Content-Length and Transfer-Encoding")
            if encoding.lower() != "chunked":
                raise _HttpError(400, "unsupported Transfer-Encoding: only chunked is accepted")
            return True, 0
        if raw_length is None:
            return False, 0
        if not _DIGITS.fullmatch(raw_length):
            raise _HttpError(400, "invalid Content-Length")
        length = int(raw_length)
        if length > self.max_body_bytes:
            raise _HttpError(413, f"request body too large (limit {self.max_body_bytes} bytes)")
        return False, length

    def _find_route(self, request: Request, raw_path: str) -> _Route | Response:
        segments = _split_path(raw_path)
        allowed: list[str] = []
        lookup = "GET" if request.method == "HEAD" else request.method
        for candidate in self._routes:
            params = candidate.match(segments)
            if params is None:
                continue
            if candidate.method != lookup:
                allowed.append(candidate.method)
                continue
            request.path_params = params
            request.route = candidate.pattern
            return candidate
        for mount in self._mounts:
            if raw_path == mount.pattern:
                query = f"?{request.query_string}" if request.query_string else ""
                response = self._error(308, "moved to the path with a trailing slash")
                response.headers["Location"] = f"{mount.pattern}/{query}"
                return response
            if raw_path.startswith(mount.pattern + "/"):
                request.route = mount.pattern
                return mount
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            response = self._error(405, "method not allowed")
            response.headers["Allow"] = ", ".join(dict.fromkeys(allowed))
            return response
        return self._error(404, "not found")

    async def _call_guard(self, request: Request) -> Response | None:
        assert self._guard is not None
        try:
            return await self._guard(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("http guard failed: %s %s", request.method, request.path)
            return self._error(500, "internal server error")

    async def _call(self, route: _Route, request: Request) -> Response | StreamingResponse:
        try:
            response = await route.handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("http handler failed: %s %s", request.method, request.path)
            return self._error(500, "internal server error")
        if not isinstance(response, Response | StreamingResponse):
            log.error(
                "http handler for %s %s returned %r, not a Response",
                request.method,
                route.pattern,
                type(response).__name__,
            )
            return self._error(500, "internal server error")
        return response

    # -- bodies --------------------------------------------------------------------------------

    def _reserve(self, n: int) -> None:
        if not self._budget.take(n):
            message = "server busy: too many request bytes in flight, retry later"
            raise _HttpError(503, message, {"Retry-After": "1"})

    async def _read_body(
        self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[bytes, int]:
        """The body and the bytes reserved for it in the budget (the caller gives them back)."""
        if not head.chunked and head.length == 0:
            return b"", 0
        self._reserve(head.length)
        taken = head.length
        try:
            if head.headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await self._drain(writer)
            deadline = asyncio.get_running_loop().time() + self.read_timeout
            if not head.chunked:
                return await self._within(deadline, reader.readexactly(head.length)), taken
            chunks: list[bytes] = []
            while True:
                size = await self._chunk_size(reader, deadline)
                if size == 0:
                    await self._skip_trailers(reader, deadline)
                    return b"".join(chunks), taken
                if taken + size > self.max_body_bytes:
                    raise _HttpError(
                        413, f"request body too large (limit {self.max_body_bytes} bytes)"
                    )
                self._reserve(size)
                taken += size
                chunks.append(await self._within(deadline, reader.readexactly(size)))
                if await self._within(deadline, reader.readexactly(2)) != b"\r\n":
                    raise _HttpError(400, "malformed chunked body: chunk data not ended by CRLF")
        except BaseException:
            self._budget.give(taken)
            raise

    async def _within(self, deadline: float, aw: Awaitable[bytes]) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                return await aw
        except TimeoutError as err:
            raise _HttpError(408, "request body timeout") from err
        except asyncio.IncompleteReadError as err:
            raise _HttpError(400, "request body ended early") from err
        except asyncio.LimitOverrunError as err:
            raise _HttpError(400, "malformed chunked body: line too long") from err

    async def _line(self, reader: asyncio.StreamReader, deadline: float) -> str:
        raw = await self._within(deadline, reader.readuntil(b"\r\n"))
        line = raw[:-2].decode("latin-1")
        if len(line) > 4096 or _CONTROL.search(line):
            raise _HttpError(400, "malformed chunked body: bad line")
        return line

    async def _chunk_size(self, reader: asyncio.StreamReader, deadline: float) -> int:
        size_text, _, _extensions = (await self._line(reader, deadline)).partition(";")
        size_text = size_text.rstrip(" \t")
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise _HttpError(400, "malformed chunked body: bad chunk size")
        return int(size_text, 16)

    async def _skip_trailers(self, reader: asyncio.StreamReader, deadline: float) -> None:
        total = 0
        while True:
            line = await self._line(reader, deadline)
            if not line:
                return
            total += len(line) + 2
            if total > self.max_header_bytes:
                raise _HttpError(431, "request trailer fields too large")

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """After refusing a body, discard what the client still sends (briefly, bounded).

        Closing a socket with unread input makes the kernel send RST, and a client still uploading
        would then see "connection reset" instead of our answer. So half-close and drain a little.
        """
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            budget = 2 * self.max_body_bytes + 65536
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2.0
            while budget > 0:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                chunk = await asyncio.wait_for(reader.read(65536), remaining)
                if not chunk:
                    break
                budget -= len(chunk)

    # -- responses -----------------------------------------------------------------------------

    def _head_lines(self, status: int, headers: list[tuple[str, str]], skip: set[str]) -> list[str]:
        """The status line and the handler's headers plus the defaults it did not set; names
        in ``skip`` (framing: the server's own) and malformed ones are left out."""
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}"]
        given = {name.lower() for name, _ in headers}
        headers = headers + [
            (k, v) for k, v in self._default_headers.items() if k.lower() not in given
        ]
        for name, value in headers:
            if name.lower() in skip or not _TOKEN.fullmatch(name) or _CONTROL.search(value):
                continue
            lines.append(f"{name}: {value}")
        return lines

    def _encode(self, response: Response, *, keep_alive: bool, head_only: bool = False) -> bytes:
        skip = {"content-length", "connection", "content-type", "transfer-encoding"}
        lines = self._head_lines(response.status, [*response.headers.items()], skip)
        lines.append(f"Content-Type: {response.content_type}")
        lines.append(f"Content-Length: {len(response.body)}")
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
        return data if head_only else data + response.body

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Request,
        response: StreamingResponse,
        *,
        keep_alive: bool,
        head_only: bool,
    ) -> bool:
        """Write a streaming answer piece by piece; returns whether to keep the connection.

        Of unknown length it is chunked (HTTP/1.0: delimited by the close) and closes the
        connection afterwards, which lets a watcher read the socket meanwhile: the client
        closing it sets ``request.disconnected`` (and so does :meth:`stop`), which ends the
        stream. Of known length it keeps the connection alive unless the body does not match
        the length (then it is closed).
        """
        unknown = response.length is None
        chunked = unknown and request.http_version == "1.1"  # HTTP/1.0: the close delimits it
        keep_alive = keep_alive and not unknown
        watcher: asyncio.Task[None] | None = None
        pieces: AsyncIterator[bytes] | None = None
        try:
            skip = {"content-length", "connection", "transfer-encoding"}
            lines = self._head_lines(response.status, list(response.headers), skip)
            if response.length is not None:
                lines.append(f"Content-Length: {response.length}")
            elif chunked and not head_only:
                lines.append("Transfer-Encoding: chunked")
            lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace"))
            await self._drain(writer)
            if head_only:
                return keep_alive
            if unknown:
                watcher = asyncio.create_task(self._watch_eof(reader, request.disconnected))
            sent = 0
            pieces = _until(response.body, request.disconnected)
            while True:
                try:
                    piece = await anext(pieces)
                except StopAsyncIteration:
                    break
                except Exception:  # the handler failed mid-answer: cut it, keep serving
                    log.exception("http streaming answer failed: %s %s", request.method,
                                  request.path)  # fmt: skip
                    writer.transport.abort()
                    return False
                if not piece:
                    continue  # an empty chunk would end a chunked body
                sent += len(piece)
                if response.length is not None and sent > response.length:
                    log.error("http handler for %s %s wrote more than its Content-Length",
                              request.method, request.path)  # fmt: skip
                    writer.transport.abort()
                    return False
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await self._drain(writer)
            if unknown:
                if chunked:
                    with contextlib.suppress(Exception):  # the client may be gone already
                        writer.write(b"0\r\n\r\n")
                        await self._drain(writer)
                return False
            return keep_alive and sent == response.length and not request.disconnected.is_set()
        finally:
            request.disconnected.set()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
            for body in (pieces, response.body):
                aclose = getattr(body, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()

    @staticmethod
    async def _watch_eof(reader: asyncio.StreamReader, gone: asyncio.Event) -> None:
        """Read (and drop) what the client sends during a chunked stream until it closes."""
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass
        gone.set()

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        response: Response,
        *,
        keep_alive: bool,
        head_only: bool = False,
    ) -> None:
        writer.write(self._encode(response, keep_alive=keep_alive, head_only=head_only))
        await self._drain(writer)

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        """Flush, or cut off a client that does not read within ``write_timeout``."""
        try:
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except TimeoutError as err:
            writer.transport.abort()
            raise ConnectionError("client did not read the response in time") from err


async def _until(body: AsyncIterator[bytes], stop: asyncio.Event) -> AsyncIterator[bytes]:
    """The pieces of ``body`` until it ends or ``stop`` is set (a wait for the next piece is
    cancelled then: a never-ending stream does not hold up the client leaving or the server
    stopping)."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            step: asyncio.Future[bytes] = asyncio.ensure_future(anext(body))
            racing: list[asyncio.Future[Any]] = [step, stopped]
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                    await step
                return
            try:
                piece = step.result()
            except StopAsyncIteration:
                return
            yield piece
    finally:
        stopped.cancel()
