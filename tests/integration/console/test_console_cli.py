"""``bgq console`` as a process: serves, is ready while Redis answers, stops on SIGTERM with exit
code 0, and refuses bad configuration with one line and exit code 2 (no traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tests.conftest import free_port
from tests.integration.console.conftest import QUEUE, wait_until

pytestmark = pytest.mark.timeout(60)
BGQ = [sys.executable, "-c", "import sys; from bgq._entry import main; sys.exit(main())"]


def test_bgq_console_serves_and_stops_on_sigterm(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "console.log"
    env = {**os.environ, "BGQ_CONSOLE_TOKEN": "t" * 20, "BGQ_CONSOLE_SECRET": "s" * 32}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*BGQ, "console", "--redis-url", redis_url, "--host", "127.0.0.1", "--port",
             str(port), "--queue", QUEUE],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None  # died: stop waiting, the asserts say why

        wait_until(up, 30, "bgq console to be ready")
        assert proc.poll() is None, log.read_text()
        page = httpx.get(url + "/", timeout=5)
        assert page.status_code == 200 and QUEUE in page.text
        assert "server" not in page.headers  # no server banner
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--queue", "Bad/queue"], {}, "not a DNS-1123 label"),
        ([], {"BGQ_CONSOLE_SECRET": "short"}, "at least 16 characters"),
        ([], {"BGQ_CONSOLE_AUTH_SERVICEACCOUNT": "true", "KUBERNETES_SERVICE_HOST": ""},
         "needs the Kubernetes API"),
    ],
)  # fmt: skip
def test_bad_configuration_is_one_line_and_exit_2(
    redis_url: str, args: list[str], env: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [*BGQ, "console", "--redis-url", redis_url, "--port", str(free_port()), *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
