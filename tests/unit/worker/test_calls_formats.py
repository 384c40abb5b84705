"""The protocol calls' argument and reply formats (the one place they are written)."""

from __future__ import annotations

import json

from bgq._calls import (
    CANCELLED,
    RELEASE,
    Dead,
    Delivery,
    Ok,
    RenewStatus,
    RetryAt,
    SettleRecord,
    fetch_args,
    orphans_args,
    parse_fetch,
    parse_renew,
    parse_settle,
    renew_args,
    settle_args,
)
from bgq.protocol import QueueName

KEYS = QueueName.parse("ns/q").keys
D1 = Delivery("j1", 1, "1-0", 7, 1, '{"task":"t"}')
D2 = Delivery("j2", 0, "2-0", 8, 2, '{"task":"u"}')


def test_fetch_args_layout_matches_fetch_lua() -> None:
    args = fetch_args(
        KEYS,
        "c",
        5,
        1000,
        lease_ms=30000,
        max_deliveries=5,
        result_ttl_ms=9,
        dead_retention_ms=8,
        adopt=[(1, "3-0"), (2, "4-0")],
    )
    assert args == [KEYS.prefix, "c", 5, 1000, 30000, 5, 9, 8, 1, "3-0", 2, "4-0"]


def test_parse_fetch() -> None:
    flat = ["j1", 1, "1-0", 7, 1, '{"task":"t"}', "j2", 0, "2-0", 8, 2, '{"task":"u"}']
    reply = parse_fetch([1234, 2, json.dumps(flat), 1])
    assert reply.deliveries == [D1, D2]
    assert (reply.next_due_ms, reply.reclaimed) == (1234, 1)
    empty = parse_fetch([-1, 0, "[]", 0])
    assert empty.deliveries == [] and empty.next_due_ms == -1


def test_settle_records_on_the_wire() -> None:
    records: list[tuple[SettleRecord, Delivery]] = [
        (Ok("49"), D1),
        (RetryAt(5000, "E: x", "tb"), D2),
        (Dead("not-retryable", "E", "tb"), D1),
        (RELEASE, D2),
        (CANCELLED, D1),
    ]
    args = settle_args(KEYS, 1000, records, result_ttl_ms=9, dead_retention_ms=8)
    assert args[:4] == [KEYS.prefix, 1000, 9, 8]
    assert json.loads(args[4]) == [
        ["ok", "j1", 1, "1-0", 7, "49", "", ""],
        ["retry", "j2", 0, "2-0", 8, 5000, "E: x", "tb"],
        ["dead", "j1", 1, "1-0", 7, "not-retryable", "E", "tb"],
        ["release", "j2", 0, "2-0", 8, "", "", ""],
        ["cancelled", "j1", 1, "1-0", 7, "", "", ""],
    ]
    assert parse_settle([3, 2, 5]) == [1, 4]


def test_renew_and_orphans() -> None:
    assert renew_args(KEYS, "c", [D1, D2]) == [
        KEYS.prefix,
        "c",
        "j1",
        1,
        "1-0",
        7,
        "j2",
        0,
        "2-0",
        8,
    ]
    assert parse_renew([1, 0, 2]) == [
        RenewStatus.RENEWED,
        RenewStatus.LOST,
        RenewStatus.CANCEL_REQUESTED,
    ]
    assert orphans_args(KEYS, "c", final=False, keep=[D1]) == [KEYS.prefix, "c", 0, "1:1-0"]
    assert orphans_args(KEYS, "c", final=True) == [KEYS.prefix, "c", 1]
