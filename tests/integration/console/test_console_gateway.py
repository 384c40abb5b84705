"""The console served by ``bgq gateway --console`` (a real gateway process, a real
redis-server, a real Chromium): the pages, assets and the live stream under ``/console/``, a
dead letter replayed through the console's own login and CSRF flow, the gateway's token still
guarding ``/v1``, SIGTERM ending open streams, and the one-line error without the extra."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser
from tests.conftest import free_port
from tests.integration.console.conftest import QUEUE, TOKEN, wait_until

from bgq.client import Client
from bgq.console import CSP
from bgq.protocol import JobState, QueueName

pytestmark = [pytest.mark.timeout(120)]
Q = QueueName.parse(QUEUE)
GATEWAY_TOKEN = "gateway-token-456"
BGQ = str(Path(sys.executable).with_name("bgq"))
JOBS = f"/v1/queues/{QUEUE}/jobs"


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path) -> Iterator[GatewayProcess]:
    """``bgq gateway`` with the console on (by the environment variable; the flag is the
    same switch), a gateway token and a console token."""
    port = free_port()
    env = {
        **os.environ, "BGQ_REDIS_URL": redis_url, "BGQ_GATEWAY_CONSOLE": "true",
        "BGQ_GATEWAY_TOKEN": GATEWAY_TOKEN, "BGQ_CONSOLE_TOKEN": TOKEN,
        "BGQ_CONSOLE_QUEUES": QUEUE, "BGQ_CONSOLE_REFRESH_SECONDS": "0.2",
    }  # fmt: skip
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([BGQ, "gateway", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    running = GatewayProcess(proc, f"http://127.0.0.1:{port}", log)

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the gateway exited: {running.logs()}")
        try:
            return httpx.get(running.url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 20, "the gateway to be ready")
    yield running
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def client(redis_url: str) -> Iterator[Client]:
    with Client(redis_url) as c:
        yield c


def enqueue(gateway: GatewayProcess, n: int = 1) -> None:
    for _ in range(n):
        r = httpx.post(gateway.url + JOBS, json={"task": "echo"},
                       headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})  # fmt: skip
        assert r.status_code == 201, r.text


def test_pages_and_assets_render_under_the_prefix(
    gateway: GatewayProcess, client: Client
) -> None:
    client.enqueue(QUEUE, "echo")
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        bare = c.get("/console")
        assert (bare.status_code, bare.headers["location"]) == (308, "/console/")
        overview = c.get("/console/")
        assert overview.status_code == 200
        assert overview.headers["content-security-policy"] == CSP  # the console's, not the API's
        text = overview.text
        assert f'href="/console/q/{QUEUE}"' in text
        assert 'data-events="/console/events/overview"' in text
        assert 'src="/console/static/console.js"' in text and 'data-root="/console"' in text
        assert 'href="/static/' not in text and 'href="/q/' not in text
        queue = c.get(f"/console/q/{QUEUE}")
        assert queue.status_code == 200
        assert f'href="/console/q/{QUEUE}/jobs"' in queue.text
        assert f'data-src="/console/api/q/{QUEUE}/chart"' in queue.text
        assert c.get("/console/static/console.js").status_code == 200
        assert c.get(f"/console/api/q/{QUEUE}/chart").status_code == 200
        jobs = c.get(f"/console/q/{QUEUE}/jobs")
        assert jobs.status_code == 200 and 'action="/console/q/' in jobs.text
        # the console's JSON error answers are recognized below the prefix too
        missing = c.get("/console/api/nowhere")
        assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
        # the gateway's own routes are still its own
        assert c.get("/livez").text == "ok\n"
        assert c.get("/readyz").status_code == 200
        metrics = c.get("/metrics").text
        assert 'bgq_gateway_requests_total{route="/console",status="200"}' in metrics


def test_the_live_stream_delivers_an_update(gateway: GatewayProcess) -> None:
    seen: list[dict[str, Any]] = []
    with httpx.Client(base_url=gateway.url, timeout=10) as c, \
            c.stream("GET", "/console/events/overview") as response:  # fmt: skip
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["transfer-encoding"] == "chunked"
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if len(seen) == 1:
                    enqueue(gateway)
                if seen[-1]["queues"][0]["backlog"] == 1 or len(seen) > 100:
                    break
    assert seen[0]["queues"][0]["backlog"] == 0
    assert seen[-1]["queues"][0]["backlog"] == 1


def _dead_letter(client: Client, job_id: str = "d1") -> str:
    """A dead letter (as the worker writes one) whose job record exists; its entry id."""
    client.enqueue_with(QUEUE, "t", job_id=job_id)
    r = client.redis
    entry = r.xadd(Q.keys.dead, {"id": job_id, "reason": "retries-exhausted", "error": "boom",
                                 "traceback": "", "dead_ms": "1",
                                 "env": json.dumps({"task": "t"})})  # fmt: skip
    r.hset(Q.keys.job(job_id), "state", "dead")
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def test_a_dead_letter_is_replayed_through_the_console_form(
    gateway: GatewayProcess, client: Client
) -> None:
    entry = _dead_letter(client)
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        c.get("/console/login")
        csrf = c.cookies["csrftoken"]
        # no gateway token needed: the console's own login admits the console token
        login = c.post("/console/login", data={"csrftoken": csrf, "token": TOKEN})
        assert (login.status_code, login.headers["location"]) == (303, "/console/")
        dead = c.get(f"/console/q/{QUEUE}/dead")
        assert f"/console/q/{QUEUE}/confirm?action=replay&amp;entry={entry}" in dead.text
        confirm = c.get(f"/console/q/{QUEUE}/confirm", params={"action": "replay",
                                                              "entry": entry})  # fmt: skip
        assert f'action="/console/q/{QUEUE}/action"' in confirm.text
        form = {"action": "replay", "entry": entry}
        assert c.post(f"/console/q/{QUEUE}/action", data=form).status_code == 403  # no CSRF
        done = c.post(f"/console/q/{QUEUE}/action", data={"csrftoken": csrf, **form})
        assert done.status_code == 303
        assert done.headers["location"].startswith(f"/console/q/{QUEUE}/dead?note=replayed+1")
        assert c.get(done.headers["location"]).status_code == 200
    assert client.get(QUEUE, "d1").state == JobState.QUEUED
    assert client.redis.xlen(Q.keys.dead) == 0


def test_v1_still_needs_the_gateway_token(gateway: GatewayProcess, client: Client) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        assert c.post(JOBS, json={"task": "t"}).status_code == 401
        console_token = {"Authorization": f"Bearer {TOKEN}"}
        assert c.post(JOBS, json={"task": "t"}, headers=console_token).status_code == 401
        ok = c.post(JOBS, json={"task": "t"}, headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
        assert ok.status_code == 201
        # the console's pages are open to look at without the gateway token (read-only)
        assert c.get("/console/").status_code == 200
    assert client.stats(QUEUE).backlog == 1


def test_sigterm_ends_open_streams_and_exits_0(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as c, \
            c.stream("GET", "/console/events/overview") as response:  # fmt: skip
        lines = response.iter_lines()
        while not next(lines).startswith("data: "):
            pass
        started = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        for _ in lines:  # the stream ends (cleanly) instead of hanging
            pass
    assert gateway.proc.wait(10) == 0, gateway.logs()
    assert time.monotonic() - started < 5  # well inside the 5 s stop grace plus exit
    assert "Traceback" not in gateway.logs()


def test_without_the_extra_the_console_flag_is_a_one_line_error(tmp_path: Path) -> None:
    blocked = tmp_path / "starlette"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('No module named starlette')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path),
                                                       os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([BGQ, "gateway", "--console", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "pip install 'bgq[console]'" in done.stderr


@pytest.mark.slow
def test_the_overview_updates_live_in_chromium(
    gateway: GatewayProcess, browser: Browser
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(gateway.url + "/console")  # the redirect to /console/
        assert page.url == gateway.url + "/console/"
        page.wait_for_function(
            "() => Number(document.getElementById('overview').dataset.version) > 0"
        )
        cell: Callable[[], str | None] = lambda: page.text_content(  # noqa: E731
            f'tr[data-queue="{QUEUE}"] td[data-f="backlog"]'
        )
        assert cell() == "0"
        page.evaluate("window.__notReloaded = true")
        enqueue(gateway, 3)
        page.wait_for_function(
            "(q) => document.querySelector(`tr[data-queue=\"${q}\"] td[data-f=\"backlog\"]`)"
            ".textContent === '3'",
            arg=QUEUE,
        )
        assert page.evaluate("window.__notReloaded") is True
        assert page.text_content("#live-state") == "live"
        # the queue link from the live table stays under the prefix
        page.click(f'tr[data-queue="{QUEUE}"] a')
        page.wait_for_url(f"{gateway.url}/console/q/{QUEUE}")
        page.wait_for_function(
            "() => Number(document.querySelector('#queue-live').dataset.version) > 0"
        )
        # the chart's data came through the gateway (fetch under the prefix)
        page.wait_for_function("() => document.getElementById('chart').dataset.series !== ''")
    finally:
        context.close()
    assert errors == [], f"script errors on the page: {errors}"
