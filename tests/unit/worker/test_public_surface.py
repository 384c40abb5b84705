"""The public surface of ``bgq`` is pinned, and importing it stays cheap (the worker's entry
point must have its signal handler in place before redis-py and pydantic load)."""

from __future__ import annotations

import subprocess
import sys

import bgq

PUBLIC = [
    "AsyncClient", "BgqError", "Client", "ConfigError", "DeadLetter", "Envelope",
    "InvalidQueueName", "Job", "JobCancelled", "JobContext", "JobFailed", "JobInfo",
    "JobNotFound", "JobSpec", "JobState", "JobTimeout", "PayloadError", "PayloadTooLarge",
    "QueueDemand", "QueueName", "RedisCommandError", "RedisUnavailable", "ReplayResult",
    "Retry", "Task", "UnknownTask",
    "WaitTimeout", "WorkerHeartbeat", "__version__", "current_job", "task",
]


def test_all_is_pinned_and_every_name_resolves() -> None:
    assert sorted(bgq.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(bgq, name) is not None, name
    assert callable(bgq.task) and not isinstance(bgq.task, type(sys))  # the decorator


def test_version_comes_from_the_package_metadata() -> None:
    from importlib import metadata

    assert bgq.__version__ == metadata.version("bgq")


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        bgq.does_not_exist  # noqa: B018
    except AttributeError as exc:
        assert "does_not_exist" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_the_entry_point_captures_signals_before_heavy_imports() -> None:
    code = (
        "import sys, signal\n"
        "import bgq._entry\n"
        "from bgq._runtime import signals\n"
        "signals.capture()\n"
        "assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL\n"
        "heavy = [m for m in ('redis', 'pydantic', 'asyncio', 'bgq.cli') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_a_signal_pending_since_start_exits_0_at_once() -> None:
    code = (
        "import os, signal\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"  # pending: blocked, not delivered
        "from bgq._runtime import signals\n"
        "signals.capture()\n"  # installs the handler, then unblocks: delivered to it now
        "print('still running')\n"
    )
    argv = [sys.executable, "-c", code]
    done = subprocess.run(argv, check=False, capture_output=True, timeout=30)
    assert done.returncode == 0
    assert b"still running" not in done.stdout
    assert b"stop requested before start" in done.stderr


def test_with_early_exit_off_the_request_is_recorded_for_the_loop() -> None:
    code = (
        "import os, signal\n"
        "from bgq._runtime import signals\n"
        "signals.capture(exit_early=False)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "assert len(signals.pending()) == 1, signals.pending()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
