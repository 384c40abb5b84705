"""enqueue.lua's wake-up trace key P:wake:trace on a real redis-server (docs/protocol.md §3)."""

from __future__ import annotations

import json
import time

import redis

import bgq
from bgq.protocol import QueueName
from bgq.scripts import SCRIPTS

Q = QueueName.parse("trace/q")
K = Q.keys
TRACE_KEY = f"{K.wake}:trace"
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def raw_enqueue(r: redis.Redis, job_id: str, *extra: str, due: int = 0) -> str:
    """The 8-argument call of an older (or other-language) producer, plus ``extra`` ARGV."""
    env = json.dumps({"v": 1, "id": job_id, "task": "t", "enqueued_at": 1})
    now = int(time.time() * 1000)
    keys = [K.job(job_id), K.ready[1], K.delayed, K.job(job_id), K.wake]
    reply = SCRIPTS.enqueue.run(r, keys, [job_id, env, 1, due, now, "", 0, str(Q), *extra])
    return str(reply[0])


def test_the_publishing_enqueue_stores_its_traceparent(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe("bgq:wake")
    try:
        assert raw_enqueue(r, "a", TP) == "enqueued"
        assert r.get(TRACE_KEY) == TP
        assert 0 < r.pttl(TRACE_KEY) <= 60_000
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:  # the first read eats SUBSCRIBE
            message = pubsub.get_message(timeout=1)
        assert message is not None and message["data"] == str(Q)  # the payload is unchanged
    finally:
        pubsub.close()  # a leftover subscriber would fool other tests' "operator subscribed"

    # within the 200 ms publish window: no wake-up, so the stored trace stays the first one
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    assert raw_enqueue(r, "b", other) == "enqueued"
    assert r.get(TRACE_KEY) == TP
    # a delayed job that wakes the queue (the window is over) stores its own trace
    r.delete(K.wake)
    assert raw_enqueue(r, "c", other, due=int(time.time() * 1000) + 60_000) == "enqueued"
    assert r.get(TRACE_KEY) == other

    # an older producer (8 arguments) that wakes the queue clears it: the key always belongs
    # to the latest wake-up, never to an older one
    r.delete(K.wake)
    assert raw_enqueue(r, "d") == "enqueued"
    assert r.get(TRACE_KEY) is None


def test_client_enqueue_passes_the_envelope_traceparent(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    with bgq.Client(redis_url) as client:
        job = client.enqueue_with(Q, "t", headers={"traceparent": TP})
        env = json.loads(str(r.hget(K.job(job.id), "env")))
    assert env["headers"]["traceparent"] == TP == r.get(TRACE_KEY)
