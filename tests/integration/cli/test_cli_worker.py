"""`bgq worker` as a real process with the CLI around it: a failing task becomes a real dead
letter, `bgq dead replay` re-runs it, `bgq enqueue --wait` sees the result, SIGTERM exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bgq.cli import EXIT_OK, main

pytestmark = pytest.mark.timeout(90)

QUEUE = "shop/reports"
TASKS = """
import os

import bgq


@bgq.task(retries=0)
async def flaky(x):
    if os.path.exists(os.environ["CLI_TEST_FLAG"]):
        raise ValueError(f"flag file present for {x}")
    return x * 2
"""


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def cli(redis_url: str, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--redis-url", redis_url, *argv])
        return code, capsys.readouterr().out

    return run


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    (tmp_path / "cli_tasks.py").write_text(TASKS)
    flag = tmp_path / "fail"
    flag.touch()
    env = {
        **os.environ,
        "CLI_TEST_FLAG": str(flag),
        "BGQ_HTTP_PORT": "0",
        "BGQ_LOG_FORMAT": "text",
        "BGQ_HEARTBEAT_SECONDS": "0.5",
        "BGQ_DRAIN_SECONDS": "5",
    }
    bgq_cli = Path(sys.executable).with_name("bgq")
    cmd = [str(bgq_cli), "--redis-url", redis_url, "worker", "cli_tasks", "-q", QUEUE, "-c", "2"]
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc, tmp_path
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_dead_letter_from_a_real_worker_then_replay(
    cli: Callable[..., tuple[int, str]], worker: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, workdir = worker
    flag = workdir / "fail"

    def stats() -> dict[str, object]:
        code, out = cli("stats", QUEUE, "--json")
        assert code == EXIT_OK
        document: dict[str, object] = json.loads(out)
        return document

    wait_for(lambda: len(stats()["workers"]) == 1, 20, "the worker's heartbeat")  # type: ignore[arg-type]
    code, out = cli("stats", QUEUE)
    assert "WORKER" in out and ("idle" in out or "busy" in out)

    assert cli("enqueue", QUEUE, "flaky", "--args", "[21]", "--job-id", "r1")[0] == EXIT_OK
    wait_for(lambda: stats()["dead"] == 1, 20, "the job to be dead-lettered")

    code, out = cli("dead", "list", QUEUE, "--json")
    (letter,) = json.loads(out)
    assert letter["job_id"] == "r1"
    assert letter["task"] == "flaky"
    assert "flag file present for 21" in letter["error"]
    assert "ValueError" in letter["traceback"]
    code, out = cli("job", QUEUE, "r1")
    assert "dead" in out and "traceback:" in out

    flag.unlink()
    code, out = cli("dead", "replay", QUEUE, "r1")
    assert (code, out.strip()) == (EXIT_OK, f"replayed 1 dead letter(s) on {QUEUE}")
    code, out = cli("enqueue", QUEUE, "flaky", "--job-id", "r1", "--wait", "20", "--json")
    assert code == EXIT_OK
    result = json.loads(out)
    assert (result["status"], result["state"], result["result"]) == ("exists", "succeeded", 42)
    assert stats()["dead"] == 0

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, (workdir / "worker.log").read_text()[-3000:]
