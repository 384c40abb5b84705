"""One "operator" process for the schedule proofs: runs bgq_operator.schedules.run_schedules.

Usage: sched_proc.py URL QUEUE SCHEDULES_JSON REAL0 SIM0 SPEED OUTFILE

The clock is warped (sim = SIM0 + (time.time() - REAL0) * SPEED) so a per-minute cron ticks
every 1/SPEED real minutes; every process given the same REAL0/SIM0 sees the same clock.
Each outcome is appended to OUTFILE as a JSON line; Redis errors are logged there and retried
(as the operator's loop does). Runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import redis.asyncio

from bgq.client import AsyncClient
from bgq.connection import async_client
from bgq.errors import BgqError
from bgq.protocol import QueueName
from bgq_operator.schedules import run_schedules
from bgq_operator.spec import ScheduleSpec


async def main() -> None:
    url, queue_text, specs_json, real0, sim0, speed, outfile = sys.argv[1:8]
    queue = QueueName.parse(queue_text)
    specs = [ScheduleSpec.model_validate(s) for s in json.loads(specs_json)]
    r = async_client(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    client = AsyncClient(redis_client=r, namespace=queue.namespace)
    known: dict[str, str] = {}
    with open(outfile, "a", buffering=1) as out:  # noqa: ASYNC230 - a test harness
        out.write(json.dumps({"started": True}) + "\n")
        while True:
            now = float(sim0) + (time.time() - float(real0)) * float(speed)
            try:
                outcomes, _ = await run_schedules(client, queue, specs, now, known)
            except (redis.exceptions.RedisError, OSError, TimeoutError, BgqError) as exc:
                out.write(json.dumps({"error": str(exc)}) + "\n")
                await asyncio.sleep(0.05)
                continue
            for o in outcomes:
                out.write(
                    json.dumps({"outcome": o.outcome, "job": o.job_id, "tick": o.tick}) + "\n"
                )
            await asyncio.sleep(0.02)


if __name__ == "__main__":
    asyncio.run(main())
