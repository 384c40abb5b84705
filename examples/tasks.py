"""Example bgq tasks: the module the example BackgroundQueues run (``tasksModule: tasks``).

Build it into a worker image with ``examples/Dockerfile`` (``FROM bgq-worker``), or run it on
your machine: ``PYTHONPATH=examples bgq worker tasks --queue default/example``.
Tasks are enqueued by name (the function's name unless ``name=`` says otherwise):
``bgq enqueue default/example add --args '[2, 3]' --wait``.
"""

from __future__ import annotations

import asyncio
import hashlib

import bgq


@bgq.task
async def echo(value: str) -> str:
    """Return ``value`` unchanged: the smallest proof that a job ran."""
    return value


@bgq.task
async def add(a: int, b: int) -> int:
    """Add two numbers (the job's result is their sum)."""
    return a + b


@bgq.task(timeout=120)
async def sleep(seconds: float) -> float:
    """Wait ``seconds`` without blocking the worker: shows concurrency and graceful drain."""
    await asyncio.sleep(seconds)
    return seconds


@bgq.task(cpu_bound=True, timeout=120)
def digest(text: str, rounds: int = 100_000) -> str:
    """Hash ``text`` ``rounds`` times: CPU-bound work that runs outside the event loop."""
    data = text.encode()
    for _ in range(rounds):
        data = hashlib.sha256(data).digest()
    return data.hex()
