"""Tasks baked into the e2e worker image (``tests/e2e/app`` is on the image's PYTHONPATH).

Run them with ``bgq worker e2e_tasks`` (or ``BGQ_TASKS_MODULE=e2e_tasks``). Each task returns the
name of the pod that ran it, so tests can tell which worker did the work.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import bgq


def _pod() -> str:
    return os.environ.get("BGQ_POD_NAME") or socket.gethostname()


@bgq.task
def noop() -> str:
    """Do nothing; returns the pod name."""
    return _pod()


@bgq.task
def sleep(seconds: float) -> dict[str, Any]:
    """Block for ``seconds`` (a long job to interrupt); returns the pod and the time slept."""
    started = time.monotonic()
    time.sleep(seconds)
    return {"pod": _pod(), "slept": round(time.monotonic() - started, 3)}


@bgq.task
def record(value: Any) -> dict[str, Any]:
    """Echo ``value`` with the pod that processed it."""
    return {"pod": _pod(), "value": value}
