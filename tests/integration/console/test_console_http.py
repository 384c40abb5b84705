"""The console over HTTP (httpx on the ASGI app, real redis-server): security headers, hostile
input answered 4xx, the auth model (anonymous read-only, token, ServiceAccount, proxy headers),
CSRF on every mutation, and the mutations themselves."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.integration.console.conftest import QUEUE, TOKEN, FakeKube

from bgq import decisions
from bgq.client import AsyncClient, Client
from bgq.console import CSP, ConsoleConfig, create_app
from bgq.console.server import config_from_env
from bgq.errors import ConfigError
from bgq.protocol import JobState, QueueName

pytestmark = pytest.mark.timeout(60)
Q = QueueName.parse(QUEUE)
FORM = {"content-type": "application/x-www-form-urlencoded"}


def make(redis_url: str, **overrides: Any) -> Any:
    settings: dict[str, Any] = {"redis_url": redis_url, "queues": [Q], "token": TOKEN,
                                **overrides}  # fmt: skip
    return create_app(ConsoleConfig(**settings))


@pytest.fixture
async def producer(redis_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(redis_url) as c:
        yield c


@pytest.fixture
async def http(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make(redis_url)),
                                 base_url="http://console.test") as c:  # fmt: skip
        yield c


async def csrf(c: httpx.AsyncClient) -> str:
    """The CSRF token of this client's cookie jar (a page sets it)."""
    await c.get("/login")
    return str(c.cookies["csrftoken"])


async def log_in(c: httpx.AsyncClient, token: str = TOKEN) -> httpx.Response:
    return await c.post("/login", data={"csrftoken": await csrf(c), "token": token})


async def dead_letter(producer: AsyncClient, job_id: str = "d1") -> str:
    """A dead letter (as the worker writes one) whose job record exists; its entry id."""
    r = producer.redis
    await producer.enqueue_with(QUEUE, "t", job_id=job_id)
    entry = await r.xadd(Q.keys.dead, {"id": job_id, "reason": "retries-exhausted",
                                       "error": "boom", "traceback": "", "dead_ms": "1",
                                       "env": json.dumps({"task": "t"})})  # fmt: skip
    await r.hset(Q.keys.job(job_id), "state", "dead")
    return str(entry)


async def test_every_answer_carries_the_security_headers(http: httpx.AsyncClient) -> None:
    for path in ("/", "/api/overview", "/static/console.js", "/q/Bad/x", "/nope", "/livez"):
        response = await http.get(path)
        assert response.headers["content-security-policy"] == CSP, path
        assert "frame-ancestors 'none'" in CSP and "'unsafe-inline'" not in CSP
        assert "script-src 'self'" in CSP
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "traceback" not in response.text.lower()
    page = await http.get("/")
    assert "<script>" not in page.text  # no inline script anywhere
    assert re.findall(r"<script[^>]*>", page.text) == [
        '<script src="/static/uPlot.iife.min.js">', '<script src="/static/console.js">'
    ]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/q/Shop/orders", 400),
        ("/q/shop/orders%0A", 400),
        ("/q/shop/" + "a" * 64, 400),
        ("/q/shop/orders/job/a%0Ab", 400),
        ("/q/shop/orders/job/" + "x" * 201, 400),
        ("/q/shop/orders/job/nope", 404),
        ("/q/shop/orders/jobs?state=done", 400),
        ("/q/shop/orders/jobs?task=a%20b", 400),
        ("/q/shop/orders/jobs?task=a%00", 400),
        ("/q/shop/orders/jobs?cursor=zz:1", 400),
        ("/q/shop/orders/jobs?cursor=" + "r1:" * 50, 400),
        ("/q/shop/orders/jobs?id=a%20b", 400),
        ("/q/shop/orders/dead?after=1;DROP", 400),
        ("/q/shop/orders/confirm?action=format", 400),
        ("/api/q/Bad/x/chart", 400),
        ("/static/../app.py", 404),
        ("/nope", 404),
    ],
)
async def test_hostile_input_is_a_4xx(http: httpx.AsyncClient, path: str, status: int) -> None:
    response = await http.get(path)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text


async def test_hostile_bodies_are_4xx_before_any_handler(http: httpx.AsyncClient) -> None:
    token = await csrf(http)
    big = await http.post(f"/q/{QUEUE}/action", content=b"a=" + b"x" * 70_000,
                          headers=FORM)
    assert big.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(100):
            yield b"x" * 1000

    streamed = await http.post(f"/q/{QUEUE}/action", content=chunks(),
                               headers=FORM)
    assert streamed.status_code == 413
    bad_length = await http.post("/login", content=b"", headers={b"content-length": "²".encode()})
    assert bad_length.status_code == 400
    not_utf8 = await http.post("/login", content=b"csrftoken=\xff\xfe&token=x",
                               headers=FORM)
    assert not_utf8.status_code in (400, 403)
    unknown_type = await http.post("/login", content=b"{}",
                                   headers={"content-type": "application/json"})  # fmt: skip
    assert unknown_type.status_code == 403
    await log_in(http)
    many = {"csrftoken": token, "action": "purge", "entry": ["1-1"] * 501}
    too_many = await http.post(f"/q/{QUEUE}/action", data=many)
    assert too_many.status_code == 400
    form = {"csrftoken": token, "action": "purge", "entry": "x"}
    bad_entry = await http.post(f"/q/{QUEUE}/action", data=form)
    assert bad_entry.status_code == 400
    bad_action = await http.post(f"/q/{QUEUE}/action",
                                 data={"csrftoken": token, "action": "rm -rf"})  # fmt: skip
    assert bad_action.status_code == 400
    nothing_named = await http.post(f"/q/{QUEUE}/action",
                                    data={"csrftoken": token, "action": "purge"})  # fmt: skip
    assert nothing_named.status_code == 400


async def test_read_only_by_default_and_every_mutation_needs_csrf_and_rights(
    http: httpx.AsyncClient, producer: AsyncClient
) -> None:
    entry = await dead_letter(producer)
    page = await http.get(f"/q/{QUEUE}/dead")
    assert page.status_code == 200 and "d1" in page.text
    assert "replay" not in page.text.split("</header>")[1].lower().replace("dead letters", "")
    token = await csrf(http)
    for action in ("replay", "purge", "pause", "resume"):
        form = {"csrftoken": token, "action": action, "all": "1"}
        refused = await http.post(f"/q/{QUEUE}/action", data=form)
        assert refused.status_code == 401, action  # anonymous, even with a valid CSRF token
    confirm = await http.get(f"/q/{QUEUE}/confirm?action=purge&all=1")
    assert confirm.status_code == 401
    assert (await log_in(http, "wrong")).status_code == 401
    assert (await log_in(http)).status_code == 303
    # logged in, but no / a wrong CSRF token: refused before the handler
    no_csrf = await http.post(f"/q/{QUEUE}/action", data={"action": "purge", "all": "1"})
    assert no_csrf.status_code == 403
    form = {"csrftoken": "forged", "action": "purge", "all": "1"}
    forged = await http.post(f"/q/{QUEUE}/action", data=form)
    assert forged.status_code == 403
    cross_site = await http.post(
        f"/q/{QUEUE}/action", data={"csrftoken": token, "action": "purge", "all": "1"},
        headers={"sec-fetch-site": "cross-site"},
    )  # fmt: skip
    assert cross_site.status_code == 403
    other_origin = await http.post(
        f"/q/{QUEUE}/action", data={"csrftoken": token, "action": "purge", "all": "1"},
        headers={"origin": "http://evil.test"},
    )  # fmt: skip
    assert other_origin.status_code == 403
    assert await producer.redis.xlen(Q.keys.dead) == 1
    page = await http.get(f"/q/{QUEUE}/dead")
    assert "a.replay" not in page.text and f"entry={entry}" in page.text
    form = {"csrftoken": token, "action": "replay", "entry": entry}
    done = await http.post(f"/q/{QUEUE}/action", data=form)
    assert done.status_code == 303 and "replayed+1" in done.headers["location"]
    assert (await producer.get(QUEUE, "d1")).state == JobState.QUEUED
    assert await producer.redis.xlen(Q.keys.dead) == 0


async def test_purge_one_and_all_pause_resume_and_cancel(
    http: httpx.AsyncClient, producer: AsyncClient
) -> None:
    first = await dead_letter(producer, "p1")
    await dead_letter(producer, "p2")
    await dead_letter(producer, "p3")
    await log_in(http)
    token = str(http.cookies["csrftoken"])

    async def act(**form: str) -> httpx.Response:
        return await http.post(f"/q/{QUEUE}/action", data={"csrftoken": token, **form})

    assert (await act(action="purge", entry=first)).status_code == 303
    assert await producer.redis.xlen(Q.keys.dead) == 2
    assert (await act(action="purge", all="1")).status_code == 303
    assert await producer.redis.xlen(Q.keys.dead) == 0
    assert (await act(action="pause")).status_code == 303
    assert await producer.redis.hexists(f"{Q.keys.prefix}:paused", "cli")
    overview = (await http.get("/api/overview")).json()["queues"][0]
    assert overview["paused"] is True
    assert (await act(action="resume")).status_code == 303
    assert not await producer.redis.exists(f"{Q.keys.prefix}:paused")
    job = await producer.enqueue_with(QUEUE, "t", job_id="c1", delay=3600)
    page = await http.get(f"/q/{QUEUE}/job/{job.id}")
    assert "confirm?action=cancel&amp;job=c1" in page.text
    cancelled = await act(action="cancel", job="c1")
    assert cancelled.status_code == 303 and cancelled.headers["location"].startswith(
        f"/q/{QUEUE}/job/c1?note=cancel"
    )
    assert (await producer.get(QUEUE, "c1")).state == JobState.CANCELLED
    assert (await act(action="cancel", job="bad id")).status_code == 400


async def test_serviceaccount_tokens_and_proxy_headers_are_authorized_by_rbac(
    redis_url: str, producer: AsyncClient
) -> None:
    await dead_letter(producer)
    kube = FakeKube()
    app = make(redis_url, token=None, kube_auth=kube, proxy_user_header="X-Forwarded-User",
               proxy_groups_header="X-Forwarded-Groups")  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://console.test") as c:  # fmt: skip
        # anonymous with RBAC configured: no queue is visible, pages are 401
        assert (await c.get("/api/overview")).json() == {"queues": []}
        assert (await c.get(f"/q/{QUEUE}")).status_code == 401
        # a bearer token: TokenReview + SubjectAccessReview (no CSRF needed: not a cookie)
        alice = {"authorization": "Bearer viewer-token"}
        assert len((await c.get("/api/overview", headers=alice)).json()["queues"]) == 1
        page = await c.get(f"/q/{QUEUE}/dead", headers=alice)
        assert page.status_code == 200 and "action=replay" not in page.text
        refused = await c.post(f"/q/{QUEUE}/action", data={"action": "purge", "all": "1"},
                               headers=alice)  # fmt: skip
        assert refused.status_code == 403
        assert "alice may not delete backgroundqueues/deadletters" in refused.text
        assert (await c.get("/api/overview", headers={"authorization": "Bearer x"})
                ).status_code == 401  # fmt: skip
        bob = {"authorization": "Bearer admin-token"}
        page = await c.get(f"/q/{QUEUE}/dead", headers=bob)
        assert "action=replay" in page.text and "action=purge" in page.text
        # proxy headers: carol (group ops) may purge, dave may only look
        dave = {"x-forwarded-user": "dave", "x-forwarded-groups": "dev"}
        assert "action=purge" not in (await c.get(f"/q/{QUEUE}/dead", headers=dave)).text
        carol = {"x-forwarded-user": "carol", "x-forwarded-groups": "dev, ops"}
        assert "action=purge" in (await c.get(f"/q/{QUEUE}/dead", headers=carol)).text
        token = await csrf(c)
        denied = await c.post(f"/q/{QUEUE}/action", headers=dave,
                              data={"csrftoken": token, "action": "purge", "all": "1"})  # fmt: skip
        assert denied.status_code == 403
        assert await producer.redis.xlen(Q.keys.dead) == 1
        done = await c.post(f"/q/{QUEUE}/action", headers=carol,
                            data={"csrftoken": token, "action": "purge", "all": "1"})  # fmt: skip
        assert done.status_code == 303
        assert await producer.redis.xlen(Q.keys.dead) == 0
        assert ("carol", "dev,ops", "shop", "orders", "delete", "deadletters") in kube.calls
        # a proxy-vouched user cannot skip CSRF: the proxy's headers are not a bearer token
        no_csrf = await c.post(f"/q/{QUEUE}/action", headers=carol,
                               data={"action": "pause"})  # fmt: skip
        assert no_csrf.status_code == 403
        # log in with a ServiceAccount token: the session carries it, RBAC still decides
        logged = await c.post("/login", data={"csrftoken": token, "token": "viewer-token"})
        assert logged.status_code == 303
        page = await c.get(f"/q/{QUEUE}/dead")
        assert page.status_code == 200 and "alice" in page.text
        assert "action=purge" not in page.text


async def test_a_forged_session_cookie_is_anonymous(redis_url: str) -> None:
    app = make(redis_url, kube_auth=FakeKube())
    cookie = "eyJraW5kIjogInRva2VuIn0=.axBYlQ.3zPEu3BCMQ2QM8fKoJaEFYXe9Cc"  # another secret's
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://console.test",
                                 cookies={"bgq_console": cookie}) as c:  # fmt: skip
        assert (await c.get(f"/q/{QUEUE}")).status_code == 401


async def test_overview_figures_jobs_per_second_and_discovered_queues(
    http: httpx.AsyncClient, producer: AsyncClient
) -> None:
    record = decisions.DecisionRecord(
        ms=int(time.time() * 1000), demand=3.0, desired=3, replicas=2, ready=1,
        bound_by="maxReplicas", reason="demand 3 capped", condition="True",
        condition_reason="WorkersAvailable",
    )  # fmt: skip
    fields: Any = record.fields()
    await producer.redis.xadd(decisions.decisions_key(Q), fields)
    await producer.redis.zadd(decisions.QUEUES_INDEX,
                              {"other/queue": record.ms, "not a queue\n": record.ms,
                               "old/queue": record.ms - 2 * 86_400_000})  # fmt: skip
    first = (await http.get("/api/overview")).json()["queues"]
    assert [q["queue"] for q in first] == ["other/queue", QUEUE]
    row = first[1]
    assert (row["replicas"], row["desired"], row["ready_replicas"]) == (2, 3, 1)
    assert (row["ready"], row["bound_by"]) == ("True", "maxReplicas")
    assert row["jobs_per_s"] is None  # one read: no rate yet
    await producer.redis.hincrby(Q.keys.stats, "succeeded", 30)
    await asyncio.sleep(1.05)
    second = (await http.get("/api/overview")).json()["queues"][1]
    assert 10 < second["jobs_per_s"] <= 30
    chart = (await http.get(f"/api/q/{QUEUE}/chart")).json()
    assert chart["desired"] == [3] and chart["marks"][0]["boundBy"] == "maxReplicas"


def test_the_overview_stream_sends_events(console_factory: Any, redis_url: str) -> None:
    """Server-sent events over a real uvicorn (httpx's ASGI transport buffers whole answers)."""
    console = console_factory(refresh_seconds=0.1)
    seen: list[dict[str, Any]] = []
    with httpx.Client(base_url=console.url, timeout=10) as c, \
            c.stream("GET", "/events/overview") as response, Client(redis_url) as producer:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-security-policy"] == CSP
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if len(seen) == 1:
                    producer.enqueue(QUEUE, "t")
                if seen[-1]["queues"][0]["backlog"] == 1 or len(seen) > 100:
                    break
    assert seen[0]["queues"][0]["backlog"] == 0
    assert seen[-1]["queues"][0]["backlog"] == 1


def test_configuration_from_the_environment(tmp_path: Any) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 20 + "\n")
    config = config_from_env("redis://r:6379/0", ["shop/a"], {
        "BGQ_CONSOLE_QUEUES": "shop/b, c/d", "BGQ_CONSOLE_TOKEN": "t",
        "BGQ_CONSOLE_SECRET_FILE": str(secret), "BGQ_CONSOLE_DISCOVER": "false",
        "BGQ_CONSOLE_REFRESH_SECONDS": "5",
    })  # fmt: skip
    assert [str(q) for q in config.queues] == ["shop/a", "shop/b", "c/d"]
    assert (config.token, config.secret, config.discover) == ("t", "s" * 20, False)
    assert config.refresh_seconds == 5 and config.kube_auth is None
    for bad in ({"BGQ_CONSOLE_SECRET": "short"}, {"BGQ_CONSOLE_DISCOVER": "maybe"},
                {"BGQ_CONSOLE_REFRESH_SECONDS": "0"}, {"BGQ_CONSOLE_REFRESH_SECONDS": "x"},
                {"BGQ_CONSOLE_AUTH_SERVICEACCOUNT": "true"}):  # fmt: skip
        with pytest.raises(ConfigError):
            config_from_env("redis://r", [], bad)


async def test_redis_down_is_503_without_the_address() -> None:
    from tests.conftest import free_port

    port = free_port()
    app = make(f"redis://127.0.0.1:{port}/0")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://console.test") as c:  # fmt: skip
        for path in ("/", "/api/overview", f"/q/{QUEUE}", f"/q/{QUEUE}/jobs", "/readyz"):
            response = await c.get(path)
            assert response.status_code == 503, (path, response.text)
            assert str(port) not in response.text, path
            assert "Traceback" not in response.text
        assert (await c.get("/livez")).status_code == 200


async def test_job_page_shows_attempts_timings_error_trace_and_progress(
    http: httpx.AsyncClient, producer: AsyncClient
) -> None:
    from bgq.progress import encode_progress

    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace}-00f067aa0ba902b7-01"
    job = await producer.enqueue_with(QUEUE, "reports.build", args=["x" * 10_000],
                                      headers={"traceparent": traceparent})  # fmt: skip
    now = int(time.time() * 1000)
    await producer.redis.hset(Q.keys.job(job.id), mapping={
        "state": "running", "attempt": "3", "started_ms": str(now),
        "progress": encode_progress(0.425, "page 17 of 40 <b>", now),
        "error": "ValueError: bad <row>", "traceback": "Traceback (most recent call last):\n  x",
    })  # fmt: skip
    page = (await http.get(f"/q/{QUEUE}/job/{job.id}")).text
    assert f'<dd id="trace">{trace}</dd>' in page
    assert "42.5 %" in page and "page 17 of 40 &lt;b&gt;" in page
    assert '<dd id="state">running</dd>' in page and '<dd id="attempt">3' in page
    assert "ValueError: bad &lt;row&gt;" in page
    assert "Traceback (most recent call last)" in page
    assert "(cut)" in page and "x" * 3990 in page and "x" * 4001 not in page
