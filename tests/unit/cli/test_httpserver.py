"""bgq.httpserver over real sockets: routing, keep-alive, limits, errors, stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from bgq.httpserver import HttpServer, Request, Response

pytestmark = pytest.mark.timeout(30)


async def echo(request: Request) -> Response:
    return Response.json(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "params": request.path_params,
            "body": request.body.decode(),
            "ua": request.headers.get("user-agent"),
        }
    )


async def boom(request: Request) -> Response:
    raise RuntimeError("handler bug")


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    srv = HttpServer("127.0.0.1", 0, max_header_bytes=2048, max_body_bytes=1000)
    srv.route("GET", "/livez", lambda r: _text("ok"))
    srv.route("POST", "/v1/queues/{namespace}/{name}/jobs", echo)
    srv.route("POST", "/v1/queues/{namespace}/{name}/jobs:batch", echo)
    srv.route("GET", "/v1/queues/{namespace}/{name}/jobs/{id}", echo)
    srv.route("DELETE", "/v1/queues/{namespace}/{name}/jobs/{id}", echo)
    srv.route("GET", "/boom", boom)
    await srv.start()
    yield srv
    await srv.stop()


async def _text(text: str) -> Response:
    return Response(body=text.encode())


def base(srv: HttpServer) -> str:
    return f"http://127.0.0.1:{srv.port}"


async def raw(srv: HttpServer, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return out


async def test_routes_params_query_and_json(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=base(server)) as client:
        r = await client.post("/v1/queues/prod/mail/jobs?x=1&y=", content=b'{"a":1}')
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {
            "method": "POST",
            "path": "/v1/queues/prod/mail/jobs",
            "query": {"x": "1", "y": ""},
            "params": {"namespace": "prod", "name": "mail"},
            "body": '{"a":1}',
            "ua": client.headers["user-agent"],
        }
        r = await client.post("/v1/queues/prod/mail/jobs:batch")
        assert r.json()["path"] == "/v1/queues/prod/mail/jobs:batch"
        r = await client.get("/v1/queues/prod/mail/jobs/a%2Fb")
        assert r.json()["params"] == {"namespace": "prod", "name": "mail", "id": "a/b"}
        r = await client.get("/livez")
        assert (r.status_code, r.text, r.headers["content-type"]) == (
            200,
            "ok",
            "text/plain; charset=utf-8",
        )


async def test_404_405_and_head(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=base(server)) as client:
        assert (await client.get("/nope")).status_code == 404
        assert (await client.get("/v1/queues/prod/mail")).status_code == 404
        r = await client.put("/v1/queues/prod/mail/jobs/1")
        assert r.status_code == 405
        assert r.headers["allow"] == "GET, DELETE, HEAD"
        r = await client.head("/livez")
        assert r.status_code == 200
        assert r.headers["content-length"] == "2"
        assert r.content == b""


async def test_handler_exception_is_500_and_server_survives(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient(base_url=base(server)) as client:
        with caplog.at_level(logging.ERROR, logger="bgq.http"):
            r = await client.get("/boom")
        assert r.status_code == 500
        assert "handler bug" in caplog.text
        assert (await client.get("/livez")).status_code == 200


async def test_keep_alive_reuses_one_connection(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(3):
            writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"Connection: keep-alive" in head
            assert await reader.readexactly(2) == b"ok"
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 5)
        assert b"Connection: close" in rest
        assert rest.endswith(b"ok")
    finally:
        writer.close()


async def test_http10_closes_by_default(server: HttpServer) -> None:
    out = await raw(server, b"GET /livez HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK")
    assert out.endswith(b"ok")


async def test_body_too_large_is_413(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=base(server)) as client:
        r = await client.post("/v1/queues/a/b/jobs", content=b"x" * 5000)
        assert r.status_code == 413
        ok = await client.post("/v1/queues/a/b/jobs", content=b"x" * 1000)
        assert ok.status_code == 200


async def test_expect_continue(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /v1/queues/a/b/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abc")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    # Too large: refused before the body is sent, no 100 Continue.
    out = await raw(
        server,
        b"POST /v1/queues/a/b/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n"
        b"Expect: 100-continue\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 413")


async def test_headers_too_large_is_431(server: HttpServer) -> None:
    big = b"X-Big: " + b"a" * 5000 + b"\r\n"
    out = await raw(server, b"GET /livez HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /livez HTTP/2.0\r\n\r\n", b"505"),
        (b"GET /livez HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", b"400"),
        (b"POST /v1/queues/a/b/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", b"400"),
        (b"POST /v1/queues/a/b/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
         b"400"),
        (b"GET livez HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
    ],
)
async def test_malformed_requests(server: HttpServer, data: bytes, status: bytes) -> None:
    out = await raw(server, data)
    assert out.startswith(b"HTTP/1.1 " + status), out
    # and the server still serves
    assert (await raw(server, b"GET /livez HTTP/1.0\r\n\r\n")).endswith(b"ok")


async def test_stop_lets_running_request_finish_and_closes_idle() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        started.set()
        await release.wait()
        return Response(body=b"done")

    srv = HttpServer("127.0.0.1", 0, stop_grace=5)
    srv.route("GET", "/slow", slow)
    srv.route("GET", "/livez", lambda r: _text("ok"))
    await srv.start()
    port = srv.port
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    async with httpx.AsyncClient() as client:
        pending = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/slow"))
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.create_task(srv.stop())
        # The idle connection is closed at once, the busy one keeps going.
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""
        assert not stopping.done()
        release.set()
        r = await asyncio.wait_for(pending, 5)
        assert (r.status_code, r.text, r.headers["connection"]) == (200, "done", "close")
        await asyncio.wait_for(stopping, 5)
    idle_writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(RuntimeError):
        _ = srv.port


async def test_stop_cancels_request_past_grace() -> None:
    entered = asyncio.Event()

    async def hang(request: Request) -> Response:
        entered.set()
        await asyncio.Event().wait()
        return Response()

    srv = HttpServer("127.0.0.1", 0, stop_grace=0.2)
    srv.route("GET", "/hang", hang)
    await srv.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.wait_for(srv.stop(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


def test_route_pattern_validation() -> None:
    srv = HttpServer()
    with pytest.raises(ValueError, match="whole segment"):
        srv.route("GET", "/a/x{id}", echo)
    with pytest.raises(ValueError, match="start with"):
        srv.route("GET", "a", echo)
    with pytest.raises(RuntimeError, match="not started"):
        _ = srv.port


async def test_guard_runs_after_routing_and_before_the_body() -> None:
    seen: list[tuple[str, bytes]] = []

    async def guard(request: Request) -> Response | None:
        seen.append((request.route, request.body))
        if request.headers.get("x-key") != "k":
            return Response(status=401, body=b"no")
        return None

    srv = HttpServer(
        "127.0.0.1", 0, guard=guard, default_headers={"Cache-Control": "no-store", "X-A": "1"}
    )
    srv.route("POST", "/v1/queues/{namespace}/{name}/jobs", echo)
    await srv.start()
    try:
        head = b"POST /v1/queues/a/b/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n"
        # refused from the head alone: no 100 Continue, the unread body closes the connection
        out = await raw(srv, head + b"Expect: 100-continue\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 401") and b"100 Continue" not in out
        assert b"Connection: close" in out and b"Cache-Control: no-store" in out
        assert srv.buffered_bytes == 0
        async with httpx.AsyncClient(base_url=base(srv)) as client:
            r = await client.post("/v1/queues/a/b/jobs", content=b"hi", headers={"x-key": "k"})
            assert (r.status_code, r.json()["body"], r.headers["x-a"]) == (200, "hi", "1")
            async def parts() -> AsyncIterator[bytes]:
                yield b"a" * 10
                yield b"b" * 5

            key = {"x-key": "k"}
            chunked = await client.post("/v1/queues/a/b/jobs", content=parts(), headers=key)
            assert "content-length" not in chunked.request.headers
            assert chunked.json()["body"] == "a" * 10 + "b" * 5
            missing = await client.get("/nowhere")
            assert missing.status_code == 404
        assert seen[0] == ("/v1/queues/{namespace}/{name}/jobs", b"")
        assert all(body == b"" for _, body in seen)
        assert len(seen) == 3  # not called for the 404
    finally:
        await srv.stop()
