"""bgq.asgibridge over real sockets: an ASGI application mounted in bgq.httpserver.

The scope it sees, streaming (chunked, flushed per message, ended by the client leaving, by a
write timeout or by stop()), a failing application (500, no traceback), and the server's
limits and guard still applying under the mount.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from bgq.asgibridge import AsgiBridge, Message, Receive, Scope, Send
from bgq.httpserver import HttpServer, Request, Response

pytestmark = pytest.mark.timeout(30)


class App:
    """A raw ASGI application whose behaviour per path the tests choose."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.lifespan: list[str] = []
        self.disconnected = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan.append(message["type"])
                if message["type"] == "lifespan.startup":
                    scope["state"]["ready"] = True
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.calls += 1
        self.scopes.append(scope)
        path = scope["path"].removeprefix(scope["root_path"])
        request = await receive()
        if path == "/boom":
            raise RuntimeError("secret detail of the failure")
        if path == "/stream":  # two pieces, the second only after release
            await self.start(send, [(b"content-type", b"text/event-stream")])
            await send({"type": "http.response.body", "body": b"one\n", "more_body": True})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"two\n", "more_body": False})
            return
        if path == "/forever":  # an endless stream, until http.disconnect
            await self.start(send, [(b"content-type", b"text/event-stream")])

            async def tick() -> None:
                while True:
                    await send({"type": "http.response.body", "body": b"tick\n",
                                "more_body": True})  # fmt: skip
                    await asyncio.sleep(0.02)

            ticking = asyncio.create_task(tick())
            assert (await receive())["type"] == "http.disconnect"
            self.disconnected.set()
            ticking.cancel()
            return
        if path == "/flood":  # big pieces to a client that does not read
            await self.start(send, [(b"content-type", b"application/octet-stream")])
            flooding = asyncio.create_task(self.flood(send))
            assert (await receive())["type"] == "http.disconnect"
            self.disconnected.set()
            flooding.cancel()
            return
        if path == "/sized":  # Content-Length given, body in two messages
            await self.start(send, [(b"content-length", b"6"), (b"content-type", b"text/plain")])
            await send({"type": "http.response.body", "body": b"abc", "more_body": True})
            await send({"type": "http.response.body", "body": b"def", "more_body": False})
            return
        if path == "/midway":  # fails after the answer started
            await self.start(send, [(b"content-type", b"text/plain")])
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            raise RuntimeError("failed midway")
        body = request["body"]
        await self.start(send, [(b"content-type", b"text/plain"), (b"set-cookie", b"a=1"),
                                (b"set-cookie", b"b=2")], 201)  # fmt: skip
        await send({"type": "http.response.body", "body": b"got " + body})

    @staticmethod
    async def start(send: Send, headers: list[tuple[bytes, bytes]], status: int = 200) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})

    @staticmethod
    async def flood(send: Send) -> None:
        while True:
            await send({"type": "http.response.body", "body": b"x" * 1_000_000,
                        "more_body": True})  # fmt: skip


async def guard(request: Request) -> Response | None:
    if request.route.startswith("/v1/") and request.headers.get("authorization") != "Bearer t":
        return Response(status=401, body=b"token\n")
    return None


@pytest.fixture
async def mounted() -> AsyncIterator[tuple[HttpServer, App, AsgiBridge]]:
    app = App()
    bridge = AsgiBridge(app, "/console")
    srv = HttpServer("127.0.0.1", 0, max_header_bytes=2048, max_body_bytes=1000, guard=guard,
                     default_headers={"X-Default": "1"})  # fmt: skip
    srv.route("POST", "/v1/jobs", lambda r: _text("v1"))
    srv.mount("/console", bridge)
    await bridge.startup()
    await srv.start()
    yield srv, app, bridge
    await srv.stop()
    await bridge.shutdown()


async def _text(text: str) -> Response:
    return Response(body=text.encode())


def url(srv: HttpServer, path: str) -> str:
    return f"http://127.0.0.1:{srv.port}{path}"


async def raw(srv: HttpServer, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return out


async def test_the_scope_is_built_from_the_parsed_request(
    mounted: tuple[HttpServer, App, AsgiBridge],
) -> None:
    srv, app, _ = mounted
    async with httpx.AsyncClient() as client:
        r = await client.post(url(srv, "/console/a%20b/c?x=1&y=%20"), content=b"hello",
                              headers={"X-Thing": "v"})  # fmt: skip
    assert (r.status_code, r.text) == (201, "got hello")
    assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]  # repeated headers survive
    assert r.headers["x-default"] == "1"  # the server's default headers are added
    scope = app.scopes[-1]
    assert scope["type"] == "http" and scope["asgi"]["version"] == "3.0"
    assert (scope["method"], scope["scheme"], scope["http_version"]) == ("POST", "http", "1.1")
    assert scope["root_path"] == "/console"
    assert scope["path"] == "/console/a b/c"
    assert scope["raw_path"] == b"/console/a%20b/c"
    assert scope["query_string"] == b"x=1&y=%20"
    headers = dict(scope["headers"])
    assert headers[b"x-thing"] == b"v" and headers[b"host"] == f"127.0.0.1:{srv.port}".encode()
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ("127.0.0.1", srv.port)
    assert scope["state"] == {"ready": True}  # from the lifespan startup
    assert app.lifespan == ["lifespan.startup"]


async def test_the_bare_prefix_redirects_and_other_paths_are_not_mounted(
    mounted: tuple[HttpServer, App, AsgiBridge],
) -> None:
    srv, app, _ = mounted
    async with httpx.AsyncClient() as client:
        r = await client.get(url(srv, "/console?a=1"))
        assert (r.status_code, r.headers["location"]) == (308, "/console/?a=1")
        for path in ("/consoles/x", "/console%2Fx", "/other"):
            assert (await client.get(url(srv, path))).status_code == 404, path
        head = await client.head(url(srv, "/console/x"))
        assert head.status_code == 201 and head.content == b""
    assert app.calls == 1  # only the HEAD reached the application


async def test_a_stream_is_chunked_and_flushed_per_message(
    mounted: tuple[HttpServer, App, AsgiBridge],
) -> None:
    srv, app, _ = mounted
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /console/stream HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"Transfer-Encoding: chunked" in head and b"Connection: close" in head
    assert b"content-type: text/event-stream" in head
    # the first piece arrives while the application still holds the second back
    assert await asyncio.wait_for(reader.readuntil(b"one\n\r\n"), 5) == b"4\r\none\n\r\n"
    app.release.set()
    assert await asyncio.wait_for(reader.read(), 5) == b"4\r\ntwo\n\r\n0\r\n\r\n"
    writer.close()


async def test_an_http10_stream_is_delimited_by_the_close(
    mounted: tuple[HttpServer, App, AsgiBridge],
) -> None:
    srv, app, _ = mounted
    app.release.set()
    out = await raw(srv, b"GET /console/stream HTTP/1.0\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == b"one\ntwo\n"


async def test_a_known_length_answer_in_pieces_keeps_the_connection(
    mounted: tuple[HttpServer, App, AsgiBridge],
) -> None:
    srv, _, _ = mounted
    async with httpx.AsyncClient() as client:
        for _ in range(2):
            r = await client.get(url(srv, "/console/sized"))
            assert (r.text, r.headers["content-length"]) == ("abcdef", "6")
            assert r.headers["connection"] == "keep-alive"
    assert srv.connections <= 1


async def test_the_client_leaving_ends_the_stream(
    mounted: tuple[HttpServer, App, AsgiBridge],
) -> None:
    srv, app, bridge = mounted
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /console/forever HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"tick\n"), 5)
    writer.close()
    await asyncio.wait_for(app.disconnected.wait(), 5)
    # the application's task (and its reaper) end too
    await asyncio.wait_for(asyncio.gather(*list(bridge._running), return_exceptions=True), 5)
    assert not bridge._running


async def test_a_client_that_does_not_read_is_cut_off_by_the_write_timeout() -> None:
    app = App()
    srv = HttpServer("127.0.0.1", 0, write_timeout=0.3)
    srv.mount("/console", AsgiBridge(app, "/console"))
    await srv.start()
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /console/flood HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(app.disconnected.wait(), 10)  # never read a byte
        writer.close()
    finally:
        await srv.stop()


async def test_stop_ends_an_endless_stream_at_once() -> None:
    app = App()
    bridge = AsgiBridge(app, "/console")
    srv = HttpServer("127.0.0.1", 0, stop_grace=20)
    srv.mount("/console", bridge)
    await bridge.startup()
    await srv.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /console/forever HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"tick\n"), 5)
    started = time.monotonic()
    await asyncio.wait_for(srv.stop(), 5)
    assert time.monotonic() - started < 2  # not the 20 s grace
    rest = await asyncio.wait_for(reader.read(), 5)
    assert rest.endswith(b"0\r\n\r\n")  # a clean end of the chunked body
    assert app.disconnected.is_set()
    await bridge.shutdown()
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]
    writer.close()


async def test_an_application_exception_is_a_500_without_traceback(
    mounted: tuple[HttpServer, App, AsgiBridge], caplog: pytest.LogCaptureFixture
) -> None:
    srv, _, _ = mounted
    async with httpx.AsyncClient() as client:
        r = await client.get(url(srv, "/console/boom"))
        assert r.status_code == 500
        assert "secret" not in r.text and "Traceback" not in r.text
        # after the answer started: the connection is cut, the server goes on
        with pytest.raises(httpx.HTTPError):
            await client.get(url(srv, "/console/midway"))
        assert (await client.get(url(srv, "/console/ok"))).status_code == 201
    assert "secret detail of the failure" in caplog.text  # in the log, not the answer


async def test_limits_and_the_guard_still_apply_under_the_mount(
    mounted: tuple[HttpServer, App, AsgiBridge],
) -> None:
    srv, app, _ = mounted
    big_head = b"GET /console/x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n"
    assert (await raw(srv, big_head)).startswith(b"HTTP/1.1 431")
    too_long = b"POST /console/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n"
    assert (await raw(srv, too_long)).startswith(b"HTTP/1.1 413")
    assert (await raw(srv, b"GET /console/x HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")
    smuggle = (b"POST /console/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
               b"Transfer-Encoding: chunked\r\n\r\nabc")  # fmt: skip
    assert (await raw(srv, smuggle)).startswith(b"HTTP/1.1 400")
    assert app.calls == 0  # none of them reached the application
    async with httpx.AsyncClient() as client:
        assert (await client.post(url(srv, "/v1/jobs"))).status_code == 401  # guarded
        assert (await client.get(url(srv, "/console/x"))).status_code == 201  # not guarded


def test_mount_prefix_validation() -> None:
    srv = HttpServer()
    for bad in ("console", "/console/", "/con sole", "/c?x", "/c%2F"):
        with pytest.raises(ValueError, match="mount prefix"):
            srv.mount(bad, AsgiBridge(App(), bad))


async def test_an_application_without_lifespan_support_still_serves() -> None:
    async def plain(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        message: Message = {"type": "http.response.start", "status": 204, "headers": []}
        await send(message)
        await send({"type": "http.response.body", "body": b""})

    bridge = AsgiBridge(plain, "/p")
    srv = HttpServer("127.0.0.1", 0)
    srv.mount("/p", bridge)
    await bridge.startup()
    await srv.start()
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(url(srv, "/p/x"))).status_code == 204
    finally:
        await srv.stop()
        await bridge.shutdown()
