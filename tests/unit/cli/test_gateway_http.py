"""The gateway's HTTP layer over an in-memory backend: validation, auth, status codes, metrics.

The same routes run against a real Redis in tests/integration/cli/test_gateway_redis.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bgq.errors import JobNotFound, RedisUnavailable
from bgq.gateway import EnqueueOutcome, EnqueueRequest, Gateway

pytestmark = pytest.mark.timeout(30)


class MemoryBackend:
    """Remembers enqueued jobs; ``down=True`` simulates an unreachable Redis."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], EnqueueRequest] = {}
        self.down = False
        self.counter = 0

    def _check(self) -> None:
        if self.down:
            raise RedisUnavailable("cannot reach Redis at redis://test:6379/0")

    async def enqueue(self, queue: str, request: EnqueueRequest) -> EnqueueOutcome:
        self._check()
        if request.job_id is None:
            self.counter += 1
            job_id = f"gen-{self.counter}"
        else:
            job_id = request.job_id
        created = (queue, job_id) not in self.jobs
        self.jobs.setdefault((queue, job_id), request)
        return EnqueueOutcome(job_id, created, "enqueued" if created else "exists")

    async def enqueue_many(
        self, queue: str, requests: list[EnqueueRequest]
    ) -> list[EnqueueOutcome]:
        return [await self.enqueue(queue, r) for r in requests]

    async def get_job(self, queue: str, job_id: str) -> dict[str, Any]:
        self._check()
        if (queue, job_id) not in self.jobs:
            raise JobNotFound(f"job {job_id} not found in queue {queue}")
        return {"id": job_id, "queue": queue, "state": "queued"}

    async def cancel_job(self, queue: str, job_id: str) -> dict[str, Any]:
        job = await self.get_job(queue, job_id)
        return {**job, "state": "cancelled", "cancelled": True}

    async def queue_stats(self, queue: str) -> dict[str, Any]:
        self._check()
        return {"queue": queue, "backlog": sum(1 for q, _ in self.jobs if q == queue)}

    async def ping(self) -> None:
        self._check()

    async def close(self) -> None:
        pass


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
async def client(backend: MemoryBackend) -> AsyncIterator[httpx.AsyncClient]:
    gateway = Gateway(backend, host="127.0.0.1", port=0, max_body_bytes=10_000)
    await gateway.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as http:
        yield http
    await gateway.stop()


JOBS = "/v1/queues/shop/emails/jobs"


async def test_enqueue_then_idempotent_repeat(
    client: httpx.AsyncClient, backend: MemoryBackend
) -> None:
    body = {"task": "app.send", "args": [1], "kwargs": {"to": "a"}, "job_id": "order-1"}
    r = await client.post(JOBS, json=body)
    assert r.status_code == 201
    assert r.json() == {
        "id": "order-1",
        "queue": "shop/emails",
        "status": "enqueued",
        "created": True,
    }
    again = await client.post(JOBS, json=body)
    assert again.status_code == 200
    assert again.json()["created"] is False
    assert backend.jobs[("shop/emails", "order-1")].kwargs == {"to": "a"}


async def test_enqueue_normalises_priority(
    client: httpx.AsyncClient, backend: MemoryBackend
) -> None:
    r = await client.post(JOBS, json={"task": "t", "priority": "low", "job_id": "p"})
    assert r.status_code == 201
    assert backend.jobs[("shop/emails", "p")].priority == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"args": []}, "task"),
        ({"task": ""}, "task"),
        ({"task": "a b"}, "task"),
        ({"task": "t", "args": {"a": 1}}, "args"),
        ({"task": "t", "kwargs": [1]}, "kwargs"),
        ({"task": "t", "delay": -1}, "delay"),
        ({"task": "t", "timeout": 0}, "timeout"),
        ({"task": "t", "retries": "many"}, "retries"),
        ({"task": "t", "priority": "urgent"}, "priority"),
        ({"task": "t", "priority": 7}, "priority"),
        ({"task": "t", "job_id": "has space"}, "job_id"),
        ({"task": "t", "job_id": "trailing-newline\n"}, "job_id"),
        ({"task": "t", "priority": True}, "priority"),
        ({"task": "t", "priority": 1.0}, "priority"),
        ({"task": "t", "priority": "1"}, "priority"),
        ({"task": "t", "retries": True}, "retries"),
        ({"task": "t", "retries": "3"}, "retries"),
        ({"task": "t", "delay": True}, "delay"),
        ({"task": "t", "timeout": False}, "timeout"),
        ({"task": "t", "surprise": 1}, "surprise"),
        ([1, 2], "body"),
    ],
)
async def test_validation_errors_name_the_field(
    client: httpx.AsyncClient, backend: MemoryBackend, body: object, field: str
) -> None:
    r = await client.post(JOBS, json=body)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["error"] == "invalid_request"
    assert error["field"] == field
    assert error["message"].startswith(field)
    assert backend.jobs == {}


async def test_bad_json_and_any_content_type(
    client: httpx.AsyncClient, backend: MemoryBackend
) -> None:
    r = await client.post(JOBS, content=b'{"task": ', headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (400, "invalid_json", "body")
    r = await client.post(JOBS, content=b"", headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["field"]) == (400, "body")
    r = await client.post(JOBS, content=b"task=x", headers={"content-type": "text/plain"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_json")
    # curl -d sends a form content type: the body is still read as JSON
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = await client.post(JOBS, content=b'{"task": "t", "job_id": "f"}', headers=form)
    assert r.status_code == 201
    assert ("shop/emails", "f") in backend.jobs


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"task": "t", "args": ' + b"[" * 1000 + b"]" * 1000 + b"}", "nested deeper than"),
        (b'{"task": "t", "args": [' + b"7" * 4400 + b"]}", "4400 digits"),
        (b'{"task": "t", "args": [' + b"9" * 101 + b"]}", "101 digits"),
        (b'{"task": "t", "args": [NaN]}', "NaN is not valid JSON"),
        (b'{"task": "t", "args": [-Infinity]}', "-Infinity is not valid JSON"),
    ],
)
async def test_hostile_json_is_a_400_not_a_500(
    client: httpx.AsyncClient, backend: MemoryBackend, body: bytes, says: str
) -> None:
    r = await client.post(JOBS, content=body)
    assert r.status_code == 400, r.text
    assert (r.json()["error"], r.json()["field"]) == ("invalid_json", "body")
    assert says in r.json()["message"]
    assert backend.jobs == {}


async def test_json_limits_leave_room_for_ordinary_documents(
    client: httpx.AsyncClient, backend: MemoryBackend
) -> None:
    nested: list[object] = []
    for _ in range(60):
        nested = [nested]
    body = {"task": "t", "job_id": "deep", "args": [nested, 10**99, -(10**99)]}
    r = await client.post(JOBS, json=body)
    assert r.status_code == 201, r.text
    batch = {"jobs": [{**body, "job_id": "deep-b"}]}
    r = await client.post(JOBS + ":batch", json=batch)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/queues/probe%0A/q/jobs",
        "/v1/queues/probe/q%0A/jobs",
        "/v1/queues/probe%0D/q/jobs",
        "/v1/queues/probe/q%00/jobs",
    ],
)
async def test_queue_names_with_a_trailing_control_byte_are_refused(
    client: httpx.AsyncClient, backend: MemoryBackend, path: str
) -> None:
    r = await client.post(path, json={"task": "t"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_queue"
    assert backend.jobs == {}


async def test_payload_too_large(client: httpx.AsyncClient, backend: MemoryBackend) -> None:
    r = await client.post(JOBS, json={"task": "t", "args": ["x" * 20_000]})
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    assert r.json()["field"] == "body"
    assert backend.jobs == {}


async def test_invalid_queue_name(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/queues/Shop/emails/jobs", json={"task": "t"})
    error = r.json()
    assert (r.status_code, error["error"], error["field"]) == (400, "invalid_queue", "namespace")
    r = await client.post("/v1/queues/shop/-emails/jobs", json={"task": "t"})
    assert (r.status_code, r.json()["field"]) == (400, "name")


async def test_batch(client: httpx.AsyncClient, backend: MemoryBackend) -> None:
    r = await client.post(
        JOBS + ":batch", json={"jobs": [{"task": "a", "job_id": "x"}, {"task": "b"}]}
    )
    assert r.status_code == 201
    assert r.json()["jobs"] == [
        {"id": "x", "status": "enqueued", "created": True},
        {"id": "gen-1", "status": "enqueued", "created": True},
    ]
    assert r.json()["created"] == 2
    r = await client.post(JOBS + ":batch", json={"jobs": [{"task": "a"}, {"task": "t", "args": 1}]})
    assert (r.status_code, r.json()["field"]) == (400, "jobs[1].args")
    assert len(backend.jobs) == 2  # nothing of the invalid batch was accepted
    r = await client.post(JOBS + ":batch", json={"jobs": []})
    assert (r.status_code, r.json()["field"]) == (400, "jobs")


async def test_server_errors_are_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/nothing")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await client.put(JOBS)
    assert (r.status_code, r.json()["error"], r.headers["allow"]) == (
        405,
        "method_not_allowed",
        "POST",
    )


async def test_get_cancel_stats_and_unknown_job(client: httpx.AsyncClient) -> None:
    await client.post(JOBS, json={"task": "t", "job_id": "j1"})
    r = await client.get(JOBS + "/j1")
    assert (r.status_code, r.json()["state"]) == (200, "queued")
    r = await client.delete(JOBS + "/j1")
    assert (r.status_code, r.json()["cancelled"]) == (200, True)
    r = await client.get(JOBS + "/nope")
    assert (r.status_code, r.json()["error"]) == (404, "job_not_found")
    r = await client.get("/v1/queues/shop/emails")
    assert r.json() == {"queue": "shop/emails", "backlog": 1}


async def test_redis_down_is_503_and_nothing_accepted(
    client: httpx.AsyncClient, backend: MemoryBackend
) -> None:
    backend.down = True
    r = await client.post(JOBS, json={"task": "t"})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"] == "redis_unavailable"
    assert (await client.get("/readyz")).status_code == 503
    assert (await client.get("/livez")).status_code == 200
    backend.down = False
    assert (await client.get("/readyz")).status_code == 200
    assert backend.jobs == {}


async def test_metrics(client: httpx.AsyncClient) -> None:
    await client.post(JOBS, json={"task": "t"})
    await client.post(JOBS, json={"task": ""})
    text = (await client.get("/metrics")).text
    assert 'bgq_gateway_jobs_enqueued_total{queue="shop/emails"} 1.0' in text
    route = "/v1/queues/{namespace}/{name}/jobs"
    assert f'bgq_gateway_requests_total{{route="{route}",status="400"}} 1.0' in text


async def test_bearer_token(backend: MemoryBackend) -> None:
    gateway = Gateway(backend, host="127.0.0.1", port=0, token="s3cret")
    await gateway.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as http:
            r = await http.post(JOBS, json={"task": "t"})
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith("Bearer")
            r = await http.post(JOBS, json={"task": "t"}, headers={"authorization": "Bearer wrong"})
            assert r.status_code == 401
            assert backend.jobs == {}
            r = await http.post(
                JOBS, json={"task": "t"}, headers={"authorization": "Bearer s3cret"}
            )
            assert r.status_code == 201
            # probes and metrics need no token
            assert (await http.get("/livez")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200
    finally:
        await gateway.stop()


async def test_mounted_apps_pass_the_token_guard_and_are_counted(backend: MemoryBackend) -> None:
    """An ASGI app mounted at /console (``bgq gateway --console``): the token guards /v1 only,
    the app's own headers win over the API's, its requests are in the metrics, and its
    lifespan runs with the gateway's start and stop."""
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        headers = [(b"content-type", b"text/html"), (b"content-security-policy", b"own")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": scope["root_path"].encode()})

    gateway = Gateway(backend, host="127.0.0.1", port=0, token="s3cret", apps={"/console": app})
    await gateway.start()
    try:
        assert events == ["lifespan.startup"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as http:
            page = await http.get("/console/")
            assert (page.status_code, page.text) == (200, "/console")
            assert page.headers["content-security-policy"] == "own"
            assert page.headers["x-frame-options"] == "DENY"  # the gateway's defaults fill in
            moved = await http.get("/console")
            assert (moved.status_code, moved.headers["location"]) == (308, "/console/")
            assert (await http.post(JOBS, json={"task": "t"})).status_code == 401
            metrics = (await http.get("/metrics")).text
            assert 'bgq_gateway_requests_total{route="/console",status="200"} 1.0' in metrics
    finally:
        await gateway.stop()
    assert events == ["lifespan.startup", "lifespan.shutdown"]


def test_error_body_is_json() -> None:
    from bgq.gateway import _error

    response = _error(400, "invalid_request", "task: required", "task")
    assert json.loads(response.body) == {
        "error": "invalid_request",
        "message": "task: required",
        "field": "task",
    }
