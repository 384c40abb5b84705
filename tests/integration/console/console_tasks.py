"""Tasks the console's browser tests run in a real worker process (``bgq worker console_tasks``).

``flaky`` fails (retries=0: straight to the dead letters) until the test sets the Redis key
``consoletest:fixed``, so a dead letter replayed after the "fix" succeeds.
"""

from __future__ import annotations

import os

import redis

import bgq


@bgq.task(retries=0)
def flaky(order: str) -> str:
    r = redis.Redis.from_url(os.environ["BGQ_REDIS_URL"], decode_responses=True)
    try:
        if not r.exists("consoletest:fixed"):
            raise RuntimeError(f"order {order}: the payment service is down")
        return f"order {order} paid"
    finally:
        r.close()


@bgq.task
def echo(value: object) -> object:
    return value
