"""Fixtures of the console tests: the console app in-process (under uvicorn, in a thread, so a
fake Kubernetes reviewer can stand in for the API server), a real worker process, and a real
Chromium (Debian's ``chromium`` package driven by Playwright; no browser download)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, sync_playwright
from tests.conftest import free_port

from bgq.console import ConsoleConfig, create_app
from bgq.kubeauth import Decision
from bgq.protocol import QueueName

HERE = Path(__file__).parent
CHROMIUM = "/usr/bin/chromium"
TOKEN = "console-admin-token-123"
QUEUE = "shop/orders"


def wait_until(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``cond`` until truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


@dataclass
class FakeKube:
    """Stands in for :class:`bgq.kubeauth.KubeAuth`. Tokens: ``viewer-token`` is alice, who may
    ``get`` (jobs, dead letters) and nothing else; ``admin-token`` is bob, who may do anything.
    Proxy users: ``carol`` (groups ``ops``: anything) and anyone else (``get`` only)."""

    calls: list[tuple[str, ...]] = field(default_factory=list)

    async def review_token(self, token: str) -> str | None:
        return {"viewer-token": "alice", "admin-token": "bob"}.get(token)

    async def authorize(self, token: str, namespace: str, name: str, verb: str,
                        subresource: str) -> Decision:  # fmt: skip
        self.calls.append((token, namespace, name, verb, subresource))
        user = await self.review_token(token)
        if user is None:
            return Decision(401)
        if user == "bob" or verb == "get":
            return Decision(200, user)
        return Decision(403, user, f"{user} may not {verb} {subresource}")

    async def authorize_user(self, username: str, groups: tuple[str, ...], namespace: str,
                             name: str, verb: str, subresource: str) -> Decision:  # fmt: skip
        self.calls.append((username, ",".join(groups), namespace, name, verb, subresource))
        if "ops" in groups or verb == "get":
            return Decision(200, username)
        return Decision(403, username, "no")


@dataclass
class ConsoleServer:
    url: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def start_console(config: ConsoleConfig) -> ConsoleServer:
    """The console under uvicorn in a thread (its own event loop), on a free port."""
    port = free_port()
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http="h11",
                                           log_level="warning", lifespan="on"))  # fmt: skip
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/livez", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 15, "the console to serve")
    return ConsoleServer(url, app, server, thread)


@pytest.fixture
def console_factory(redis_url: str) -> Iterator[Callable[..., ConsoleServer]]:
    """``console_factory(**ConsoleConfig fields)`` -> a running console (stopped at teardown)."""
    started: list[ConsoleServer] = []

    def start(**overrides: Any) -> ConsoleServer:
        settings: dict[str, Any] = {
            "redis_url": redis_url, "queues": [QueueName.parse(QUEUE)], "token": TOKEN,
            "refresh_seconds": 0.3, **overrides,
        }  # fmt: skip
        server = start_console(ConsoleConfig(**settings))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[Worker]:
    """A real ``bgq worker console_tasks`` process on :data:`QUEUE`."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "BGQ_REDIS_URL": redis_url, "BGQ_QUEUE": QUEUE, "BGQ_HTTP_PORT": "0",
        "BGQ_POD_NAME": "console-test", "BGQ_HEARTBEAT_SECONDS": "0.5", "BGQ_LOG_LEVEL": "INFO",
    }  # fmt: skip
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bgq.worker", "console_tasks"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    yield Worker(proc, log)
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's Chromium (``apt-get install chromium``: .ci/run installs it), driven by
    Playwright. Function-scoped: Playwright's sync API keeps an event loop running in this
    thread while it is open, which would break the asyncio tests that run after it."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()
