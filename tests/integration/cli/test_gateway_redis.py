"""The HTTP gateway against a real redis-server, with real HTTP requests (httpx)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio

from bgq.client import AsyncClient
from bgq.gateway import Gateway, RedisBackend
from bgq.protocol import QueueName

pytestmark = pytest.mark.timeout(60)

QUEUE = "shop/emails"
JOBS = "/v1/queues/shop/emails/jobs"
KEYS = QueueName.parse(QUEUE).keys


async def start_gateway(url: str, **kwargs: Any) -> Gateway:
    client = AsyncClient(url)
    gateway = Gateway(RedisBackend(client, url), host="127.0.0.1", port=0, **kwargs)
    await gateway.start()
    return gateway


@pytest.fixture
async def http(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    gateway = await start_gateway(redis_url, max_body_bytes=50_000)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as client:
        yield client
    await gateway.stop()
    await gateway.backend.close()


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def test_enqueue_is_stored_per_protocol(
    http: httpx.AsyncClient, r: redis.asyncio.Redis
) -> None:
    body = {
        "task": "myapp.tasks.send_email",
        "args": ["ada@example.com"],
        "kwargs": {"subject": "hi"},
        "job_id": "welcome-ada",
        "priority": "high",
        "timeout": 30,
        "retries": 2,
    }
    resp = await http.post(JOBS, json=body)
    assert resp.status_code == 201, resp.text
    assert resp.json() == {
        "id": "welcome-ada",
        "queue": QUEUE,
        "status": "enqueued",
        "created": True,
    }
    job = await r.hgetall(KEYS.job("welcome-ada"))
    assert job["state"] == "queued"
    env = json.loads(job["env"])
    assert (env["task"], env["args"], env["kwargs"]) == (
        "myapp.tasks.send_email",
        ["ada@example.com"],
        {"subject": "hi"},
    )
    assert (env["priority"], env["timeout"], env["max_retries"]) == (0, 30, 2)
    entries = await r.xrange(KEYS.ready[0]) or []
    assert [(fields or {}).get("id") for _, fields in entries] == ["welcome-ada"]

    again = await http.post(JOBS, json=body)
    assert (again.status_code, again.json()["status"]) == (200, "exists")
    assert await r.xlen(KEYS.ready[0]) == 1  # nothing queued twice

    got = await http.get(JOBS + "/welcome-ada")
    assert got.status_code == 200
    doc = got.json()
    assert (doc["state"], doc["task"], doc["attempt"], doc["args"]) == (
        "queued",
        "myapp.tasks.send_email",
        1,
        ["ada@example.com"],
    )
    assert doc["headers"]["traceparent"].startswith("00-")

    stats = (await http.get("/v1/queues/shop/emails")).json()
    assert (stats["queue"], stats["backlog"], stats["dead"]) == (QUEUE, 1, 0)


async def test_delay_unique_and_cancel(http: httpx.AsyncClient, r: redis.asyncio.Redis) -> None:
    resp = await http.post(JOBS, json={"task": "t", "delay": 60, "unique_key": "u1"})
    assert resp.status_code == 201
    job_id = resp.json()["id"]
    assert await r.zscore(KEYS.delayed, job_id) is not None
    dup = await http.post(JOBS, json={"task": "t", "unique_key": "u1"})
    assert dup.status_code == 200
    assert dup.json() == {"id": job_id, "queue": QUEUE, "status": "duplicate", "created": False}

    cancel = await http.delete(f"{JOBS}/{job_id}")
    assert cancel.json() == {
        "id": job_id,
        "queue": QUEUE,
        "outcome": "cancelled",
        "cancelled": True,
    }
    assert await r.zscore(KEYS.delayed, job_id) is None
    assert (await http.get(f"{JOBS}/{job_id}")).json()["state"] == "cancelled"
    assert (await http.delete(f"{JOBS}/nope")).status_code == 404
    assert (await http.get(f"{JOBS}/nope")).status_code == 404


async def test_batch_is_one_pipeline_and_all_or_nothing(
    http: httpx.AsyncClient, r: redis.asyncio.Redis
) -> None:
    jobs = [{"task": "t", "args": [i]} for i in range(200)]
    resp = await http.post(JOBS + ":batch", json={"jobs": jobs})
    assert resp.status_code == 201
    assert resp.json()["created"] == 200
    assert await r.xlen(KEYS.ready[1]) == 200
    bad = await http.post(
        JOBS + ":batch", json={"jobs": [{"task": "t"}, {"task": "t", "delay": "soon"}]}
    )
    assert (bad.status_code, bad.json()["field"]) == (400, "jobs[1].delay")
    assert await r.xlen(KEYS.ready[1]) == 200


async def test_bad_input_is_400_naming_the_field_and_stores_nothing(
    http: httpx.AsyncClient, r: redis.asyncio.Redis
) -> None:
    resp = await http.post(JOBS, content=b'{"task": "t", "args": [1,]}')
    assert (resp.status_code, resp.json()["error"], resp.json()["field"]) == (
        400,
        "invalid_json",
        "body",
    )
    resp = await http.post(JOBS, json={"task": "t", "kwargs": "x=1"})
    assert (resp.status_code, resp.json()["field"]) == (400, "kwargs")
    resp = await http.post(JOBS, json={"task": "t", "args": ["x" * 60_000]})
    assert resp.status_code == 413
    resp = await http.post("/v1/queues/shop/Emails/jobs", json={"task": "t"})
    assert (resp.status_code, resp.json()["field"]) == (400, "name")
    assert await r.keys("bgq:*") == []


async def test_redis_down_is_503_then_recovers(persistent_redis: Any) -> None:
    url = persistent_redis.url
    gateway = await start_gateway(url)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as http:
            assert (await http.get("/readyz")).status_code == 200
            ok = await http.post(JOBS, json={"task": "t", "job_id": "before"})
            assert ok.status_code == 201

            persistent_redis.stop()
            down = await http.post(JOBS, json={"task": "t", "job_id": "during"})
            assert down.status_code == 503, down.text
            assert down.json()["error"] == "redis_unavailable"
            assert down.headers["retry-after"] == "1"
            assert (await http.get("/readyz")).status_code == 503
            assert (await http.get("/livez")).status_code == 200
            assert (await http.get(JOBS + "/before")).status_code == 503

            persistent_redis.start()
            assert (await http.get("/readyz")).status_code == 200
            # the caller retries the refused request with its job id: stored exactly once
            retry = await http.post(JOBS, json={"task": "t", "job_id": "during"})
            assert retry.status_code == 201
            assert (await http.get(JOBS + "/before")).json()["state"] == "queued"
            metrics = (await http.get("/metrics")).text
            assert "bgq_gateway_redis_unavailable_total 2.0" in metrics
    finally:
        await gateway.stop()
        await gateway.backend.close()
    sync = redis.Redis.from_url(url, decode_responses=True)
    assert sync.xlen(KEYS.ready[1]) == 2
    sync.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_bgq_gateway_command_with_token(redis_url: str, tmp_path: Path) -> None:
    """`bgq gateway` as a process: bearer token from the environment, SIGTERM exits 0."""
    port = _free_port()
    env = {**os.environ, "BGQ_REDIS_URL": redis_url, "BGQ_GATEWAY_TOKEN": "s3cret"}
    cmd = [str(Path(sys.executable).with_name("bgq")), "gateway", "--host", "127.0.0.1"]
    with open(tmp_path / "gateway.log", "wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(base + "/readyz").status_code == 200
            except httpx.TransportError:
                return False

        _wait_for(ready, 20, "the gateway to be ready")
        denied = httpx.post(base + JOBS, json={"task": "t"})
        assert denied.status_code == 401
        allowed = httpx.post(
            base + JOBS, json={"task": "t"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert allowed.status_code == 201
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, (tmp_path / "gateway.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    assert sync.xlen(KEYS.ready[1]) == 1
    sync.close()


async def test_gateway_concurrent_enqueues(http: httpx.AsyncClient, r: redis.asyncio.Redis) -> None:
    """Many concurrent keep-alive requests: every 201 is a stored job."""
    results = await asyncio.gather(
        *(http.post(JOBS, json={"task": "t", "job_id": f"c{i}"}) for i in range(100))
    )
    assert [resp.status_code for resp in results] == [201] * 100
    assert await r.xlen(KEYS.ready[1]) == 100


async def test_job_document_shows_progress_and_checkpoint(
    http: httpx.AsyncClient, r: redis.asyncio.Redis
) -> None:
    from bgq.progress import encode_checkpoint, encode_progress

    resp = await http.post(JOBS, json={"task": "t"})
    job_id = resp.json()["id"]
    assert (await http.get(f"{JOBS}/{job_id}")).json()["progress"] is None
    # what renew.lua's progress records store for a running job
    await r.hset(
        KEYS.job(job_id),
        mapping={
            "state": "running",
            "progress": encode_progress(0.5, "half way", 1767225600000),
            "checkpoint": encode_checkpoint({"row": 10}),
        },
    )
    doc = (await http.get(f"{JOBS}/{job_id}")).json()
    assert doc["progress"] == {
        "fraction": 0.5,
        "detail": "half way",
        "updated_at": "2026-01-01T00:00:00.000+00:00",
    }
    assert doc["checkpoint"] == {"row": 10}
