"""A small, dependency-free asyncio HTTP/1.1 server.

bgq serves a handful of tiny endpoints: the worker's ``/livez``, ``/readyz`` and ``/metrics``, and
the enqueue gateway (``bgq.gateway``). Pulling in a web framework for that would bloat every worker
image, so this module implements just enough of HTTP/1.1 (RFC 9112) on ``asyncio.start_server``:

* keep-alive (the HTTP/1.1 default; ``Connection: close`` honoured; HTTP/1.0 closes unless
  asked to keep alive),
* request bodies framed by ``Content-Length`` (chunked request bodies get ``411``),
* ``Expect: 100-continue`` (curl sends it for large bodies),
* size limits: request line plus headers over ``max_header_bytes`` → ``431``, a body over
  ``max_body_bytes`` → ``413`` (checked before reading it),
* routing by method and path pattern (``/v1/queues/{namespace}/{name}/jobs``) → ``404``/``405``,
  ``HEAD`` answered by the ``GET`` handler without a body,
* a handler exception becomes a logged ``500``; it never takes the server down,
* ``stop()`` closes the listener, lets requests in progress finish for a short grace period,
  then cancels what is left and closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

__all__ = ["ErrorResponse", "Handler", "HttpServer", "Request", "Response"]

log = logging.getLogger("bgq.http")

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_IDLE_TIMEOUT = 75.0
DEFAULT_READ_TIMEOUT = 30.0

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass
class Request:
    """One parsed HTTP request. Header names are lower-cased; ``path`` is percent-decoded."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    path_params: dict[str, str]


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


Handler = Callable[[Request], Awaitable[Response]]
ErrorResponse = Callable[[int, str], Response]
"""Builds the body of the server's own errors (400, 404, 405, 413, 431, 500, ...)."""


class _HttpError(Exception):
    """A protocol-level problem: answered with ``status``, then the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Route:
    method: str
    pattern: str
    parts: list[tuple[bool, str]]  # (is_param, literal text or parameter name)
    handler: Handler

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


def _split_path(path: str) -> list[str]:
    """Split ``/a/b%2Fc/d`` into segments ``["a", "b/c", "d"]``, decoding after splitting."""
    return [unquote(part) for part in path.split("/")[1:]]


def _plain(status: int, message: str) -> Response:
    return Response(status=status, body=(message + "\n").encode())


class HttpServer:
    """An asyncio HTTP/1.1 server with a tiny router.

    Usage::

        server = HttpServer("127.0.0.1", 8080)
        server.route("GET", "/livez", livez)
        await server.start()
        ...
        await server.stop()

    ``error_response(status, message)`` shapes the server's own error answers (plain text by
    default; the gateway answers JSON).
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        stop_grace: float = 5.0,
        error_response: ErrorResponse | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.stop_grace = stop_grace
        self._error = error_response or _plain
        self._routes: list[_Route] = []
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
        if not _TOKEN.match(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern must start with '/': {pattern!r}")
        parts: list[tuple[bool, str]] = []
        for segment in pattern.split("/")[1:]:
            param = _PARAM.match(segment)
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

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``). Raises if the server is not started."""
        if self._port is None:
            raise RuntimeError("HttpServer is not started")
        return self._port

    async def start(self) -> None:
        """Bind and start accepting connections. Raises ``OSError`` if the port is taken."""
        if self._server is not None:
            raise RuntimeError("HttpServer is already started")
        self._stopping = False
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
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        while not self._stopping:
            try:
                head = await asyncio.wait_for(self._read_head(reader), self.idle_timeout)
            except _HttpError as err:
                await self._write(writer, self._error(err.status, err.message), keep_alive=False)
                return
            if head is None:
                return  # the client closed between requests
            self._busy.add(task)
            try:
                keep_alive = await self._handle_one(head, reader, writer)
            finally:
                self._busy.discard(task)
            if not keep_alive:
                return

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        """Read the request line and headers; ``None`` on a clean close before any byte."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as err:
            raise _HttpError(431, "request header fields too large") from err
        except asyncio.IncompleteReadError as err:
            if not err.partial.strip():
                return None
            raise
        if len(head) > self.max_header_bytes:
            raise _HttpError(431, "request header fields too large")
        return head

    async def _handle_one(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request whose head was read; returns whether to keep the connection."""
        try:
            method, target, version, headers = self._parse_head(head)
        except _HttpError as err:
            await self._write(writer, self._error(err.status, err.message), keep_alive=False)
            return False

        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in connection
        else:
            keep_alive = "close" not in connection

        try:
            body = await self._read_body(headers, reader, writer)
        except _HttpError as err:
            await self._write(writer, self._error(err.status, err.message), keep_alive=False)
            await self._linger(reader, writer)
            return False

        path, _, query_string = target.partition("?")
        request = Request(
            method=method,
            path=unquote(path),
            query=dict(parse_qsl(query_string, keep_blank_values=True)),
            headers=headers,
            body=body,
            path_params={},
        )
        response = await self._dispatch(request, path)
        keep_alive = keep_alive and not self._stopping
        await self._write(writer, response, keep_alive=keep_alive, head_only=method == "HEAD")
        return keep_alive

    def _parse_head(self, head: bytes) -> tuple[str, str, str, dict[str, str]]:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError as err:  # pragma: no cover - latin-1 decodes any byte
            raise _HttpError(400, "undecodable request head") from err
        lines = text.split("\r\n")
        # RFC 9112 2.2: ignore at least one empty line before the request line.
        while lines and not lines[0]:
            lines.pop(0)
        if not lines:
            raise _HttpError(400, "empty request")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        if not _TOKEN.match(method):
            raise _HttpError(400, "malformed method")
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _HttpError(505, "HTTP version not supported")
        if target.startswith(("http://", "https://")):  # absolute-form: keep only the path
            after_scheme = target.split("://", 1)[1]
            slash = after_scheme.find("/")
            target = after_scheme[slash:] if slash >= 0 else "/"
        if not target.startswith("/"):
            raise _HttpError(400, "request target must be an absolute path")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or not _TOKEN.match(name):
                raise _HttpError(400, "malformed header line")
            key = name.lower()
            value = value.strip(" \t")
            if key in headers:
                if key == "content-length" and headers[key] != value:
                    raise _HttpError(400, "conflicting Content-Length headers")
                headers[key] = value if key == "content-length" else f"{headers[key]}, {value}"
            else:
                headers[key] = value
        return method, target, version, headers

    async def _read_body(
        self, headers: dict[str, str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        if "transfer-encoding" in headers:
            raise _HttpError(411, "chunked request bodies are not supported; send Content-Length")
        raw_length = headers.get("content-length")
        if raw_length is None:
            return b""
        if not raw_length.isdigit():
            raise _HttpError(400, "invalid Content-Length")
        length = int(raw_length)
        if length > self.max_body_bytes:
            raise _HttpError(413, f"request body too large (limit {self.max_body_bytes} bytes)")
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        if length == 0:
            return b""
        return await asyncio.wait_for(reader.readexactly(length), self.read_timeout)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """After refusing a body, discard what the client still sends (briefly, bounded).

        Closing a socket with unread input makes the kernel send RST, and a client still uploading
        would then see "connection reset" instead of our 413. So half-close and drain a little.
        """
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            budget = 16 * self.max_body_bytes + 65536
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

    async def _dispatch(self, request: Request, raw_path: str) -> Response:
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
            try:
                response = await candidate.handler(request)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("http handler failed: %s %s", request.method, request.path)
                return self._error(500, "internal server error")
            if not isinstance(response, Response):
                log.error(
                    "http handler for %s %s returned %r, not a Response",
                    request.method,
                    candidate.pattern,
                    type(response).__name__,
                )
                return self._error(500, "internal server error")
            return response
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            response = self._error(405, "method not allowed")
            response.headers["Allow"] = ", ".join(dict.fromkeys(allowed))
            return response
        return self._error(404, "not found")

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        response: Response,
        *,
        keep_alive: bool,
        head_only: bool = False,
    ) -> None:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        skip = {"content-length", "connection", "content-type", "transfer-encoding"}
        for name, value in response.headers.items():
            if name.lower() in skip or "\r" in value or "\n" in value:
                continue
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Type: {response.content_type}")
        lines.append(f"Content-Length: {len(response.body)}")
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
        writer.write(data if head_only else data + response.body)
        await writer.drain()
