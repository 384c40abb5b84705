"""The gateway's ServiceAccount-token path over a fake reviewer: which permission each route asks
for, and how the decisions map to answers (401, 403, 503) before the body is read. The real
TokenReview/SubjectAccessReview round trip runs on the cluster in tests/e2e/test_gateway_auth.py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from tests.unit.cli.test_gateway_http import MemoryBackend

from bgq.errors import ConfigError
from bgq.gateway import Gateway
from bgq.kubeauth import AuthUnavailable, Decision, KubeAuth, _TtlCache

pytestmark = pytest.mark.timeout(30)
JOBS = "/v1/queues/shop/emails/jobs"


class FakeReviewer:
    """Tokens: ``ok`` may do anything, ``deny`` nothing, ``down`` = API server unreachable."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str, str]] = []

    async def authorize(
        self, token: str, namespace: str, name: str, verb: str, subresource: str
    ) -> Decision:
        self.calls.append((token, namespace, name, verb, subresource))
        if token == "down":
            raise AuthUnavailable("no API server")
        if token == "ok":
            return Decision(200, "system:serviceaccount:a:caller")
        if token == "deny":
            return Decision(403, "system:serviceaccount:a:caller", "a:caller may not create")
        return Decision(401)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[httpx.AsyncClient, FakeReviewer, MemoryBackend]]:
    reviewer = FakeReviewer()
    backend = MemoryBackend()
    gateway = Gateway(
        backend,
        host="127.0.0.1",
        port=0,
        token="static",
        kube_auth=reviewer,  # type: ignore[arg-type]
    )
    await gateway.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as http:
        yield http, reviewer, backend
    await gateway.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_each_route_asks_for_its_permission(
    setup: tuple[httpx.AsyncClient, FakeReviewer, MemoryBackend],
) -> None:
    http, reviewer, _ = setup
    assert (
        await http.post(JOBS, json={"task": "t", "job_id": "j"}, headers=bearer("ok"))
    ).status_code == 201
    await http.post(JOBS + ":batch", json={"jobs": [{"task": "t"}]}, headers=bearer("ok"))
    await http.get(JOBS + "/j", headers=bearer("ok"))
    await http.delete(JOBS + "/j", headers=bearer("ok"))
    await http.get("/v1/queues/shop/emails", headers=bearer("ok"))
    assert [c[1:] for c in reviewer.calls] == [
        ("shop", "emails", "create", "jobs"),
        ("shop", "emails", "create", "jobs"),
        ("shop", "emails", "get", "jobs"),
        ("shop", "emails", "delete", "jobs"),
        ("shop", "emails", "get", "jobs"),
    ]


async def test_decisions_map_to_answers(
    setup: tuple[httpx.AsyncClient, FakeReviewer, MemoryBackend],
) -> None:
    http, reviewer, backend = setup
    r = await http.post(JOBS, json={"task": "t"}, headers=bearer("deny"))
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    assert "may not create" in r.json()["message"]
    r = await http.post(JOBS, json={"task": "t"}, headers=bearer("garbage"))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = await http.post(JOBS, json={"task": "t"}, headers=bearer("down"))
    assert (r.status_code, r.headers["retry-after"], r.json()["error"]) == (
        503,
        "1",
        "auth_unavailable",
    )
    assert "API server" not in r.text  # the reason goes to the log only
    r = await http.post(JOBS, json={"task": "t"})
    assert r.status_code == 401
    assert backend.jobs == {}
    # the static token still works and is not sent to the API server
    calls = len(reviewer.calls)
    assert (await http.post(JOBS, json={"task": "t"}, headers=bearer("static"))).status_code == 201
    assert len(reviewer.calls) == calls
    # a bad queue name is answered 400 without a review
    r = await http.post("/v1/queues/Shop/emails/jobs", json={"task": "t"}, headers=bearer("ok"))
    assert r.status_code == 400 and len(reviewer.calls) == calls


async def test_denied_before_the_body_is_read(
    setup: tuple[httpx.AsyncClient, FakeReviewer, MemoryBackend],
) -> None:
    http, _, _ = setup
    port = http.base_url.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {JOBS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer deny\r\n"
        "Content-Length: 900000\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 403") and b"100 Continue" not in answer


def test_ttl_cache_expires_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("bgq.kubeauth.time.monotonic", lambda: now[0])
    cache = _TtlCache(ttl=10, size=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)  # evicts the least recently used: b
    assert (cache.get("b"), cache.get("a"), cache.get("c")) == (None, 1, 3)
    now[0] += 10
    assert cache.get("a") is None
    off = _TtlCache(ttl=0)
    off.put("x", 1)
    assert off.get("x") is None


def test_from_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        KubeAuth.from_env({})
    ca = ssl.get_default_verify_paths().openssl_cafile  # any readable CA bundle will do
    env = {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "BGQ_GATEWAY_KUBE_AUDIENCE": "queues",
        "BGQ_KUBE_CA_FILE": ca,
    }
    auth = KubeAuth.from_env(env)
    assert (auth.api_url, auth.audience) == ("https://10.0.0.1:443", "queues")
    assert KubeAuth.from_env({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}).api_url == (
        "https://[fd00::1]:443"
    )
    with pytest.raises(ConfigError, match="CA file"):
        KubeAuth.from_env({**env, "BGQ_KUBE_CA_FILE": str(tmp_path / "missing.crt")})
    with pytest.raises(ConfigError, match="https"):
        KubeAuth("http://x", tmp_path / "t", None)


async def test_unreachable_api_server_fails_closed(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("gateway-token")
    auth = KubeAuth("https://127.0.0.1:1", token, None, timeout=2)
    with pytest.raises(AuthUnavailable, match="TokenReview"):
        await auth.authorize("caller", "a", "q", "create", "jobs")
