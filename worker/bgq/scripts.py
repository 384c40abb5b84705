"""The Lua scripts of the protocol (``bgq/lua/*.lua``), run with EVALSHA and a NOSCRIPT fallback.

The scripts are package data so a producer in another language can load the very same files.
``Script`` works with both the sync and the asyncio redis-py clients.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import redis
import redis.asyncio

from bgq.connection import AsyncRedis, SyncRedis

NAMES = (
    "enqueue", "fetch", "settle", "renew", "cancel", "orphans", "replay", "demand", "parked",
    "delayed_page",
)

PRELUDE = "_finish"
"""``bgq/lua/_finish.lua``: final-state bookkeeping shared by :data:`WITH_PRELUDE`."""
WITH_PRELUDE = frozenset({"fetch", "settle", "cancel"})


@cache
def source(name: str) -> str:
    """The text Redis runs for ``bgq/lua/<name>.lua`` (with the shared prelude if it needs it)."""
    text = resources.files("bgq").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return source(PRELUDE) + text if name in WITH_PRELUDE else text


class Script:
    """One Lua script: its source and SHA1; call it sync or async, loading it on NOSCRIPT."""

    __slots__ = ("name", "sha", "text")

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = source(name)
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()  # Redis names scripts by SHA1

    def run(self, client: SyncRedis, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on a sync client; on NOSCRIPT, SCRIPT LOAD and run again."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.text)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    def pipe(self, pipeline: Any, keys: list[str], args: list[Any]) -> None:
        """Queue an EVALSHA on a pipeline of any topology.

        redis-py's cluster pipelines block the ``evalsha()`` method but route a raw
        ``EVALSHA`` command by its first key's slot, so this is the one spelling that works on
        standalone, Sentinel and Cluster pipelines alike.
        """
        pipeline.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    async def arun(self, client: AsyncRedis, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on an asyncio client; on NOSCRIPT, SCRIPT LOAD and run again."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await client.script_load(self.text)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


class Scripts:
    """All protocol scripts, read once at import."""

    def __init__(self) -> None:
        self.enqueue = Script("enqueue")
        self.fetch = Script("fetch")
        self.settle = Script("settle")
        self.renew = Script("renew")
        self.cancel = Script("cancel")
        self.orphans = Script("orphans")
        self.replay = Script("replay")
        self.demand = Script("demand")
        self.parked = Script("parked")
        self.delayed_page = Script("delayed_page")


SCRIPTS = Scripts()

__all__ = ["NAMES", "PRELUDE", "SCRIPTS", "WITH_PRELUDE", "Script", "Scripts", "source"]
