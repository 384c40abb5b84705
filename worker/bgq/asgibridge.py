"""Serve an ASGI application (the web console) from :class:`bgq.httpserver.HttpServer`.

``bgq gateway --console`` serves the console on the gateway's port. The console is a Starlette
application; running it under uvicorn beside the gateway would mean a second HTTP parser with
other limits. Instead the gateway's hardened server parses and bounds every request (head size
and deadline, body size and budget, connection cap, the guard) and only then this bridge hands
the finished request to the application as an ASGI HTTP scope:

* ``path`` is the full, percent-decoded path and ``root_path`` the mount prefix
  (``/console``), as the ASGI spec and Starlette expect (the application strips the prefix to
  route, and builds its links, redirects and asset URLs with it); ``raw_path``,
  ``query_string``, ``headers`` (lower-cased names), ``client``, ``server`` and
  ``http_version`` come from the parsed request.
* ``receive()`` returns the whole (already read, bounded) body once, then waits until the
  answer is over (written, the client left, the server stops) and returns ``http.disconnect``.
* The answer starts when the application sends ``http.response.start`` and its first body
  message: a complete body (or a ``Content-Length`` given by the application) is written with a
  length, anything else as a chunked stream (server-sent events). ``send()`` waits until its
  message is taken, so a slow client slows the application down instead of filling memory.
* An exception before the answer started is the server's ``500`` (logged, no traceback to the
  client); after it started, the connection is cut (the client sees an incomplete answer).
* When the answer is over the application has ``app_grace`` seconds to return, then it is
  cancelled; :meth:`AsgiBridge.shutdown` cancels whatever is left.
* ``lifespan``: :meth:`AsgiBridge.startup` and :meth:`AsgiBridge.shutdown` run the
  application's lifespan protocol, if it speaks it (the console closes its Redis client).

Dependency-free, like :mod:`bgq.httpserver`: nothing here imports the application's framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from bgq.httpserver import Request, Response, StreamingResponse

__all__ = ["ASGIApp", "AsgiBridge", "Message", "Receive", "Scope", "Send"]

log = logging.getLogger("bgq.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ASGI = {"version": "3.0", "spec_version": "2.3"}
_DONE: Message = {"type": "bgq.app.done"}
"""Queued after the application returned (or failed): no more messages will come."""


class _AppFailedError(Exception):
    """The application raised; the original exception is the cause."""


class AsgiBridge:
    """One ASGI application under ``root_path`` (e.g. ``/console``) of an HttpServer.

    Usage::

        bridge = AsgiBridge(app, "/console")
        server.mount("/console", bridge)
        await bridge.startup()
        await server.start()
        ...
        await server.stop()
        await bridge.shutdown()
    """

    def __init__(
        self,
        app: ASGIApp,
        root_path: str,
        *,
        app_grace: float = 2.0,
        lifespan_timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.root_path = root_path
        self.app_grace = app_grace
        self.lifespan_timeout = lifespan_timeout
        self._state: dict[str, Any] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._lifespan: asyncio.Task[None] | None = None
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()

    # -- lifespan ------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Run the application's lifespan startup. Raises ``RuntimeError`` if it reports a
        failure; an application without lifespan support is fine."""
        scope: Scope = {"type": "lifespan", "asgi": _ASGI, "state": self._state}

        async def run() -> None:
            try:
                await self.app(scope, self._to_app.get, self._from_app.put)
            except Exception as exc:  # no lifespan support (or it failed): note and go on
                log.debug("asgi lifespan ended: %r", exc)
            finally:
                await self._from_app.put(_DONE)

        self._lifespan = asyncio.create_task(run())
        await self._to_app.put({"type": "lifespan.startup"})
        reply = await asyncio.wait_for(self._from_app.get(), self.lifespan_timeout)
        if reply["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"{self.root_path}: startup failed: {reply.get('message', '')}")
        if reply is _DONE:
            self._lifespan = None

    async def shutdown(self) -> None:
        """Cancel requests still running, then run the lifespan shutdown (bounded)."""
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is None:
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(TimeoutError):
            reply = await asyncio.wait_for(self._from_app.get(), self.lifespan_timeout)
            if reply["type"] == "lifespan.shutdown.failed":
                log.warning("%s: shutdown failed: %s", self.root_path, reply.get("message", ""))
        lifespan.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await lifespan

    # -- requests ------------------------------------------------------------------------------

    def scope(self, request: Request) -> Scope:
        """The ASGI HTTP scope of a parsed request."""
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": request.http_version,
            "method": request.method,
            "scheme": "http",
            "path": request.path,
            "raw_path": request.raw_path.encode("latin-1"),
            "query_string": request.query_string.encode("latin-1"),
            "root_path": self.root_path,
            "headers": [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in request.headers.items()
            ],
            "client": request.client,
            "server": request.server,
            "state": dict(self._state),
        }

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        """Run the application on ``request`` until its answer starts (an HttpServer mount
        handler)."""
        messages: asyncio.Queue[Message] = asyncio.Queue(maxsize=1)
        gone = request.disconnected
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if gone.is_set():
                return  # the answer is over: nobody reads this (like uvicorn, no error)
            put = asyncio.ensure_future(messages.put(message))
            waiting = asyncio.ensure_future(gone.wait())
            racing: list[asyncio.Future[Any]] = [put, waiting]
            try:
                await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
                if not put.done():
                    put.cancel()

        failure: list[BaseException] = []

        async def run() -> None:
            try:
                await self.app(self.scope(request), receive, send)
            except asyncio.CancelledError:
                with contextlib.suppress(asyncio.QueueFull):
                    messages.put_nowait(_DONE)
                raise
            except Exception as exc:
                failure.append(exc)
            await send(_DONE)  # handed over like any message (or dropped once the answer is over)

        task = asyncio.create_task(run())
        reaper = asyncio.create_task(self._reap(task, gone))
        for running in (task, reaper):
            self._running.add(running)
            running.add_done_callback(self._running.discard)

        async def next_message() -> Message:
            message = await messages.get()
            if message is _DONE and failure:
                raise _AppFailedError(f"{type(failure[0]).__name__}") from failure[0]
            return message

        start = await next_message()
        if start is _DONE:
            raise RuntimeError("the ASGI application returned without answering")
        if start.get("type") != "http.response.start":
            raise RuntimeError(f"the ASGI application sent {start.get('type')!r} first")
        status = int(start.get("status", 200))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
        length = _content_length(headers)
        first = await next_message()
        if first is _DONE or first.get("type") != "http.response.body":
            first = {"type": "http.response.body", "body": b"", "more_body": False}
        more = bool(first.get("more_body", False))
        if length is None and not more:
            length = len(first.get("body", b""))
        return StreamingResponse(status, headers, self._body(first, next_message), length)

    @staticmethod
    async def _body(
        first: Message, next_message: Callable[[], Awaitable[Message]]
    ) -> AsyncIterator[bytes]:
        message = first
        while True:
            if message.get("type") == "http.response.body":
                yield bytes(message.get("body", b""))
                if not message.get("more_body", False):
                    return
            elif message is _DONE:
                # the application returned in the middle of its body: the stream is cut
                raise RuntimeError("the ASGI application ended its answer early")
            message = await next_message()

    async def _reap(self, task: asyncio.Task[None], gone: asyncio.Event) -> None:
        """Once the answer is over, give the application ``app_grace`` seconds, then cancel."""
        with contextlib.suppress(asyncio.CancelledError):
            await gone.wait()
            await asyncio.wait([task], timeout=self.app_grace)
        if not task.done():
            task.cancel()


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    """The application's ``Content-Length`` (plain digits), if it gave one."""
    for name, value in headers:
        if name.lower() == "content-length" and value.strip().isdigit():
            return int(value.strip())
    return None
