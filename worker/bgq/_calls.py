"""Every Lua call of the worker side, with typed arguments and replies (one owner of the formats).

The scripts in ``bgq/lua`` define the wire protocol (docs/protocol.md). This module is the only
place that knows how their arguments are laid out and how their replies are shaped: the worker
runtime (``bgq._runtime``) and :mod:`bgq.testing` both go through it, so a format is written out
exactly once.

The records are small named tuples (immutable, and cheap on the per-job path):
:class:`Delivery` (a job handed to a consumer), the
:data:`SettleRecord` variants (:class:`Ok`, :class:`RetryAt`, :class:`Dead`, :class:`Release`,
:class:`Cancelled`), :class:`RenewStatus` and :class:`StopReason` (why the worker stopped a
job it held). The argument builders and reply parsers are pure; :class:`QueueCalls` binds them
to one queue and an asyncio client, :func:`fetch_sync` / :func:`settle_sync` to a blocking one.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import redis
import redis.asyncio

from bgq.connection import AsyncRedis, SyncRedis
from bgq.progress import renew_args as progress_renew_args
from bgq.protocol import GROUP, Keys
from bgq.scripts import SCRIPTS

SETTLE_CHUNK = 2000
"""Most records one settle call carries (bounds a single script's run time)."""
RENEW_CHUNK = 2000
"""Most leases one renew call carries."""

_dumps = json.JSONEncoder(separators=(",", ":")).encode


class StopReason(enum.Enum):
    """Why the worker stopped a job it holds before the job returned."""

    DRAIN = "drain"
    """Shutdown deadline: hand the job back without consuming a retry."""
    LOST = "lost"
    """The lease was lost (reclaimed elsewhere): forget the job, settle nothing."""
    CANCEL = "cancel"
    """A client asked to cancel the job."""
    TIMEOUT = "timeout"
    """The job overran its timeout: a failure, retried per policy."""


class Delivery(NamedTuple):
    """A job handed to a consumer by the fetch script (fencing = ``token``)."""

    job_id: str
    band: int
    entry: str
    token: int
    attempt: int
    envelope: str


class FetchReply(NamedTuple):
    """What one fetch returned."""

    next_due_ms: int
    """Earliest delayed job's due time (-1: none delayed)."""
    deliveries: list[Delivery]
    reclaimed: int
    """Jobs taken over from expired leases (of dead workers) in this call."""
    poison: int = 0
    """Jobs this call dead-lettered as poison pills."""
    checkpoints: dict[str, str] | None = None
    """Saved checkpoint (JSON text) of delivered jobs that have one, by job id (None: none)."""


class Ok(NamedTuple):
    """The job succeeded; ``result`` is its JSON text."""

    result: str

    @property
    def op(self) -> str:
        return "ok"

    def fields(self) -> tuple[Any, str, str]:
        return self.result, "", ""


class RetryAt(NamedTuple):
    """The job failed and runs again at ``due_ms`` (attempt + 1)."""

    due_ms: int
    error: str
    traceback: str

    @property
    def op(self) -> str:
        return "retry"

    def fields(self) -> tuple[Any, str, str]:
        return self.due_ms, self.error, self.traceback


class Dead(NamedTuple):
    """The job goes to the dead letters with ``reason`` (e.g. ``retries-exhausted``)."""

    reason: str
    error: str
    traceback: str

    @property
    def op(self) -> str:
        return "dead"

    def fields(self) -> tuple[Any, str, str]:
        return self.reason, self.error, self.traceback


class Release(NamedTuple):
    """Hand the job back to the ready stream; its attempt is unchanged (shutdown)."""

    @property
    def op(self) -> str:
        return "release"

    def fields(self) -> tuple[Any, str, str]:
        return "", "", ""


class Cancelled(NamedTuple):
    """The job observed a cancel request."""

    @property
    def op(self) -> str:
        return "cancelled"

    def fields(self) -> tuple[Any, str, str]:
        return "", "", ""


SettleRecord = Ok | RetryAt | Dead | Release | Cancelled
"""How a fetched job ends (one ``settle.lua`` record)."""

RELEASE = Release()
CANCELLED = Cancelled()
"""The two field-less records as singletons. Compare records by type (``isinstance``) or, for
these two, by identity: as named tuples ``Release() == Cancelled()`` (two empty tuples)."""


class RenewStatus(enum.IntEnum):
    """Per-lease answer of ``renew.lua``."""

    LOST = 0
    RENEWED = 1
    CANCEL_REQUESTED = 2


# ----------------------------------------------------------------------------- pure formats


def fetch_args(
    keys: Keys,
    consumer: str,
    want: int,
    now_ms: int,
    *,
    lease_ms: int,
    max_deliveries: int,
    result_ttl_ms: int,
    dead_retention_ms: int,
    adopt: Sequence[tuple[int, str]] = (),
) -> list[Any]:
    """ARGV of ``fetch.lua``; ``adopt`` are (band, entry) pairs a blocking read delivered."""
    args: list[Any] = [
        keys.prefix,
        consumer,
        want,
        now_ms,
        lease_ms,
        max_deliveries,
        result_ttl_ms,
        dead_retention_ms,
    ]
    for band, entry in adopt:
        args += (band, entry)
    return args


def parse_fetch(reply: Any) -> FetchReply:
    """``{next_due_ms, n, jobs JSON, reclaimed[, poison, checkpoints JSON]}`` ->
    :class:`FetchReply` (the last two are absent from replies of older scripts)."""
    n = int(reply[1])
    deliveries: list[Delivery] = []
    checkpoints: dict[str, str] = {}
    if n:
        flat = json.loads(reply[2])
        # tuple.__new__ straight from the slices: the per-job path, without NamedTuple's
        # Python-level __new__ frame (same records: the reply carries exactly 6 per job)
        new = tuple.__new__
        deliveries = [new(Delivery, flat[i : i + 6]) for i in range(0, 6 * n, 6)]
        if len(reply) > 5 and reply[5] != "{}":
            checkpoints = json.loads(reply[5])
    poison = int(reply[4]) if len(reply) > 4 else 0
    return FetchReply(int(reply[0]), deliveries, int(reply[3]), poison, checkpoints)


def settle_wire(records: Iterable[tuple[SettleRecord, Delivery]]) -> str:
    """The JSON array ``settle.lua`` takes: per record op, id, band, entry, token, a, b, c."""
    return _dumps([(r.op, d.job_id, d.band, d.entry, d.token, *r.fields()) for r, d in records])


def settle_args(
    keys: Keys,
    now_ms: int,
    records: Iterable[tuple[SettleRecord, Delivery]],
    *,
    result_ttl_ms: int,
    dead_retention_ms: int,
) -> list[Any]:
    """ARGV of ``settle.lua``."""
    return [keys.prefix, now_ms, result_ttl_ms, dead_retention_ms, settle_wire(records)]


def parse_settle(reply: Any) -> list[int]:
    """0-based indexes of the records the script rejected as stale (job reclaimed elsewhere)."""
    return [int(i) - 1 for i in reply[1:]]


def renew_args(keys: Keys, consumer: str, deliveries: Iterable[Delivery]) -> list[Any]:
    """ARGV of ``renew.lua``."""
    args: list[Any] = [keys.prefix, consumer]
    for d in deliveries:
        args += (d.job_id, d.band, d.entry, d.token)
    return args


def parse_renew(reply: Any) -> list[RenewStatus]:
    """One :class:`RenewStatus` per lease, in order."""
    return [RenewStatus(int(s)) for s in reply]


def orphans_args(
    keys: Keys, consumer: str, *, final: bool, keep: Iterable[Delivery] = ()
) -> list[Any]:
    """ARGV of ``orphans.lua``: hand back pending entries of ``consumer`` not in ``keep``."""
    return [keys.prefix, consumer, 1 if final else 0, *(f"{d.band}:{d.entry}" for d in keep)]


# ----------------------------------------------------------------------------- asyncio calls


class QueueCalls:
    """The worker's protocol calls for one queue on an asyncio client."""

    def __init__(
        self,
        client: AsyncRedis,
        keys: Keys,
        consumer: str,
        *,
        lease_ms: int,
        max_deliveries: int,
        result_ttl_ms: int,
        dead_retention_ms: int,
    ) -> None:
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.lease_ms = lease_ms
        self.max_deliveries = max_deliveries
        self.result_ttl_ms = result_ttl_ms
        self.dead_retention_ms = dead_retention_ms
        self._route = [keys.ready[1]]

    def _fetch_args(self, want: int, now_ms: int, adopt: Sequence[tuple[int, str]]) -> list[Any]:
        return fetch_args(
            self.keys,
            self.consumer,
            want,
            now_ms,
            lease_ms=self.lease_ms,
            max_deliveries=self.max_deliveries,
            result_ttl_ms=self.result_ttl_ms,
            dead_retention_ms=self.dead_retention_ms,
            adopt=adopt,
        )

    def _settle_args(
        self, now_ms: int, records: Sequence[tuple[SettleRecord, Delivery]]
    ) -> list[Any]:
        return settle_args(
            self.keys,
            now_ms,
            records,
            result_ttl_ms=self.result_ttl_ms,
            dead_retention_ms=self.dead_retention_ms,
        )

    async def ensure_groups(self) -> None:
        """Create the consumer group on every band's stream (BUSYGROUP is fine)."""
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys.ready:
            pipe.xgroup_create(key, GROUP, id="0", mkstream=True)
        for r in await pipe.execute(raise_on_error=False):
            if isinstance(r, Exception) and "BUSYGROUP" not in str(r):
                raise r

    async def load_scripts(self) -> None:
        """SCRIPT LOAD the worker's scripts (EVALSHA then needs no fallback round trip)."""
        for script in (SCRIPTS.fetch, SCRIPTS.settle, SCRIPTS.renew, SCRIPTS.orphans):
            await self.client.script_load(script.text)

    async def fetch(
        self, want: int, now_ms: int, adopt: Sequence[tuple[int, str]] = ()
    ) -> FetchReply:
        """Promote due jobs, adopt, reclaim expired leases, read up to ``want`` new jobs."""
        reply = await SCRIPTS.fetch.arun(
            self.client, self._route, self._fetch_args(want, now_ms, adopt)
        )
        return parse_fetch(reply)

    async def settle(
        self, now_ms: int, records: Sequence[tuple[SettleRecord, Delivery]]
    ) -> list[int]:
        """Apply ``records``; returns the indexes rejected as stale."""
        reply = await SCRIPTS.settle.arun(
            self.client, self._route, self._settle_args(now_ms, records)
        )
        return parse_settle(reply)

    async def settle_and_fetch(
        self,
        now_ms: int,
        records: Sequence[tuple[SettleRecord, Delivery]],
        want: int,
        adopt: Sequence[tuple[int, str]] = (),
    ) -> tuple[list[int] | BaseException, FetchReply | BaseException]:
        """Settle and fetch in ONE pipelined round trip. Each half's failure comes back as an
        exception value (the settle may fail while the fetch succeeds and vice versa)."""
        pipe = self.client.pipeline(transaction=False)
        # Script.pipe, not pipe.evalsha(): redis-py's cluster pipeline blocks the latter
        SCRIPTS.settle.pipe(pipe, self._route, self._settle_args(now_ms, records))
        SCRIPTS.fetch.pipe(pipe, self._route, self._fetch_args(want, now_ms, adopt))
        settle_reply, fetch_reply = await pipe.execute(raise_on_error=False)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in (settle_reply, fetch_reply)):
            await self.load_scripts()
        settled: list[int] | BaseException = (
            settle_reply if isinstance(settle_reply, BaseException) else parse_settle(settle_reply)
        )
        fetched: FetchReply | BaseException = (
            fetch_reply if isinstance(fetch_reply, BaseException) else parse_fetch(fetch_reply)
        )
        return settled, fetched

    async def renew(
        self,
        deliveries: Sequence[Delivery],
        progress: Iterable[tuple[str, int, str, str]] = (),
    ) -> list[RenewStatus]:
        """Extend the leases of ``deliveries`` (fenced on their tokens); in the same call store
        ``progress`` updates ``(job id, token, progress JSON, checkpoint JSON)``."""
        args = renew_args(self.keys, self.consumer, deliveries)
        args += progress_renew_args(progress)
        reply = await SCRIPTS.renew.arun(self.client, self._route, args)
        return parse_renew(reply)

    async def release_orphans(self, *, final: bool, keep: Iterable[Delivery] = ()) -> int:
        """Hand back entries pending for this consumer that it does not hold (all if final,
        which also removes the consumer from the group); returns how many."""
        reply = await SCRIPTS.orphans.arun(
            self.client,
            self._route,
            orphans_args(self.keys, self.consumer, final=final, keep=keep),
        )
        return int(reply)


# ----------------------------------------------------------------------------- blocking calls


def ensure_groups_sync(client: SyncRedis, keys: Keys) -> None:
    """Create the consumer groups with a blocking client (BUSYGROUP is fine)."""
    for key in keys.ready:
        try:
            client.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def fetch_sync(
    client: SyncRedis,
    keys: Keys,
    consumer: str,
    want: int,
    now_ms: int,
    *,
    lease_ms: int,
    max_deliveries: int,
    result_ttl_ms: int,
    dead_retention_ms: int,
) -> FetchReply:
    """:meth:`QueueCalls.fetch` with a blocking client."""
    args = fetch_args(
        keys,
        consumer,
        want,
        now_ms,
        lease_ms=lease_ms,
        max_deliveries=max_deliveries,
        result_ttl_ms=result_ttl_ms,
        dead_retention_ms=dead_retention_ms,
    )
    return parse_fetch(SCRIPTS.fetch.run(client, [keys.ready[1]], args))


def settle_sync(
    client: SyncRedis,
    keys: Keys,
    now_ms: int,
    records: Sequence[tuple[SettleRecord, Delivery]],
    *,
    result_ttl_ms: int,
    dead_retention_ms: int,
) -> list[int]:
    """:meth:`QueueCalls.settle` with a blocking client."""
    args = settle_args(
        keys, now_ms, records, result_ttl_ms=result_ttl_ms, dead_retention_ms=dead_retention_ms
    )
    return parse_settle(SCRIPTS.settle.run(client, [keys.ready[1]], args))


__all__ = [
    "CANCELLED",
    "RELEASE",
    "RENEW_CHUNK",
    "SETTLE_CHUNK",
    "Cancelled",
    "Dead",
    "Delivery",
    "FetchReply",
    "Ok",
    "QueueCalls",
    "Release",
    "RenewStatus",
    "RetryAt",
    "SettleRecord",
    "StopReason",
    "ensure_groups_sync",
    "fetch_args",
    "fetch_sync",
    "orphans_args",
    "parse_fetch",
    "parse_renew",
    "parse_settle",
    "renew_args",
    "settle_args",
    "settle_sync",
    "settle_wire",
]
