"""Redis connections for every part of bgq, on all three topologies.

One factory (:func:`sync_client`, :func:`async_client`) takes a :class:`~bgq.settings.RedisSettings`
(or, for standalone Redis, a plain URL) and returns redis-py's own clients:

* ``standalone``: ``redis.Redis`` / ``redis.asyncio.Redis`` from the URL;
* ``cluster``: ``redis.cluster.RedisCluster`` / ``redis.asyncio.RedisCluster`` from the seed
  URL plus ``nodes``: redis-py routes every command by its key's slot, follows MOVED/ASK, sends
  SCRIPT LOAD to every primary and splits a pipeline into one pipeline per node. bgq does no
  slot routing of its own: all keys of a queue share the hash tag ``{ns/name}``, so every Lua
  script and every pipeline of one queue lands on one node;
* ``sentinel``: the master of ``sentinel_master`` as found by the sentinels (redis-py's
  ``Sentinel.master_for``), which reconnects to the new master after a failover.

What a blocking command and ``CLIENT UNBLOCK`` need on a cluster (the node that holds the key,
and the node that holds the blocked connection) is in :class:`BlockingConnection`. Every
misconfiguration becomes a :class:`~bgq.errors.ConfigError` naming the setting
(:func:`check`, :func:`describe`), every unreachable server a
:class:`~bgq.errors.RedisUnavailable`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any, cast, overload
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.exceptions
import redis.sentinel

from bgq.errors import BgqError, ConfigError, RedisCommandError, RedisUnavailable
from bgq.settings import RedisMode, RedisSettings

SyncRedis = redis.Redis | redis.cluster.RedisCluster
"""What :func:`sync_client` returns (both have the command methods bgq uses)."""
AsyncRedis = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
"""What :func:`async_client` returns."""

CONNECT_TIMEOUT_S = 5


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, ""))


def settings_of(
    target: RedisSettings | str, password: str | None = None, ca_file: str | None = None
) -> RedisSettings:
    """``target`` as settings: a bare URL means standalone Redis (the historical contract)."""
    if isinstance(target, RedisSettings):
        if password is None and ca_file is None:
            return target
        return target.model_copy(
            update={
                "password": password or target.password,
                "tls_ca_file": ca_file or target.tls_ca_file,
            }
        )
    return RedisSettings(
        mode=RedisMode.STANDALONE, url=target, password=password, tls_ca_file=ca_file, nodes=""
    )


def describe_target(s: RedisSettings) -> str:
    """A one-line, password-free description of where ``s`` points (for messages and logs)."""
    if s.mode is RedisMode.STANDALONE:
        return redact(s.url)
    extra = f" + {s.nodes}" if s.nodes.strip() else ""
    if s.mode is RedisMode.CLUSTER:
        return f"cluster seeds {redact(s.url)}{extra}"
    return f"sentinel master {s.sentinel_master!r} via {redact(s.url)}{extra}"


def check(s: RedisSettings) -> None:
    """Reject settings that cannot work, naming the ``BGQ_REDIS_*`` setting; no I/O."""
    try:
        parts = urlsplit(s.url)
        port = parts.port
    except ValueError as exc:
        if "," in s.url:
            raise ConfigError(_list_in_url(s)) from None
        raise ConfigError(f"BGQ_REDIS_URL {redact(s.url)!r} is not a valid URL: {exc}") from None
    allowed = ("redis", "rediss", "unix") if s.mode is RedisMode.STANDALONE else ("redis", "rediss")
    if parts.scheme not in allowed:
        raise ConfigError(
            f"BGQ_REDIS_URL {redact(s.url)!r} must start with "
            + ", ".join(f"{a}://" for a in allowed)
            + f" in {s.mode.value} mode (rediss:// is TLS)"
        )
    if "," in parts.netloc:
        raise ConfigError(_list_in_url(s))
    try:
        nodes = s.node_list
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if s.tls_ca_file and parts.scheme != "rediss":
        raise ConfigError("a CA file (BGQ_REDIS_TLS_CA_FILE) needs a rediss:// BGQ_REDIS_URL")
    if s.mode is RedisMode.STANDALONE:
        if nodes:
            raise ConfigError(
                "BGQ_REDIS_NODES is set but BGQ_REDIS_MODE is standalone: for a Redis Cluster "
                "set BGQ_REDIS_MODE=cluster, for Sentinel BGQ_REDIS_MODE=sentinel"
            )
        if s.sentinel_master:
            raise ConfigError(
                "BGQ_REDIS_SENTINEL_MASTER is set but BGQ_REDIS_MODE is standalone: "
                "set BGQ_REDIS_MODE=sentinel (BGQ_REDIS_URL then names a sentinel)"
            )
        return
    if parts.scheme != "unix" and (not parts.hostname or (port is None and not nodes)):
        raise ConfigError(
            f"BGQ_REDIS_URL {redact(s.url)!r} must name host:port of a "
            f"{'cluster node' if s.mode is RedisMode.CLUSTER else 'sentinel'}"
        )
    if s.mode is RedisMode.CLUSTER:
        if parts.path.strip("/") not in ("", "0"):
            raise ConfigError(
                f"BGQ_REDIS_URL {redact(s.url)!r} selects db {parts.path.strip('/')}: a Redis "
                "Cluster has only db 0 (drop the path)"
            )
        if s.sentinel_master:
            raise ConfigError(
                "BGQ_REDIS_SENTINEL_MASTER is set but BGQ_REDIS_MODE is cluster: use one of the two"
            )
        return
    if not s.sentinel_master:
        raise ConfigError(
            "BGQ_REDIS_MODE is sentinel but BGQ_REDIS_SENTINEL_MASTER (the monitored master's "
            "name, e.g. mymaster) is not set"
        )


def _list_in_url(s: RedisSettings) -> str:
    return (
        f"BGQ_REDIS_URL {redact(s.url)!r} lists several hosts: give one node in BGQ_REDIS_URL "
        "and the others in BGQ_REDIS_NODES (host:port,host:port), with BGQ_REDIS_MODE=cluster "
        "or sentinel"
    )


def _options(s: RedisSettings) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": 30,
    }
    if s.password:
        opts["password"] = s.password
    if s.tls_ca_file:
        opts["ssl_ca_certs"] = s.tls_ca_file
    return opts


def _sentinel_args(
    s: RedisSettings, extra: dict[str, Any]
) -> tuple[list[tuple[str, int]], dict[str, Any], dict[str, Any]]:
    """Sentinel addresses, the data nodes' connection kwargs, the sentinels' kwargs."""
    parts = urlsplit(s.url)
    sentinels = [(parts.hostname or "localhost", parts.port or 26379), *s.node_list]
    conn = _options(s)
    conn.update(extra)
    conn.pop("health_check_interval", None)
    db = parts.path.strip("/")
    conn["db"] = int(db) if db.isdigit() else 0
    if parts.username:
        conn["username"] = parts.username
    if parts.password and not s.password:
        conn["password"] = parts.password
    tls = parts.scheme == "rediss"
    if tls:
        conn["ssl"] = True
    sentinel_kwargs: dict[str, Any] = {
        k: v for k, v in conn.items() if k.startswith("socket_") or k.startswith("ssl")
    }
    return sentinels, conn, sentinel_kwargs


def _cluster_nodes(s: RedisSettings, module: Any) -> list[Any]:
    return [module.ClusterNode(host, port) for host, port in s.node_list]


@overload
def sync_client(
    target: str, password: str | None = None, ca_file: str | None = None, **extra: Any
) -> redis.Redis: ...
@overload
def sync_client(
    target: RedisSettings, password: str | None = None, ca_file: str | None = None, **extra: Any
) -> SyncRedis: ...
def sync_client(
    target: RedisSettings | str,
    password: str | None = None,
    ca_file: str | None = None,
    **extra: Any,
) -> SyncRedis:
    """A blocking client (``decode_responses=True``) for ``target``; see the module doc.

    A cluster client reads the slot map here (redis-py does so on construction): unreachable
    seeds raise :class:`RedisUnavailable`, a seed that is no cluster node :class:`ConfigError`.
    """
    s = settings_of(target, password, ca_file)
    check(s)
    opts = _options(s)
    opts.update(extra)
    if s.mode is RedisMode.STANDALONE:
        return redis.Redis.from_url(s.url, **opts)
    if s.mode is RedisMode.CLUSTER:
        try:
            return redis.cluster.RedisCluster.from_url(
                s.url, startup_nodes=_cluster_nodes(s, redis.cluster), **opts
            )
        except Exception as exc:
            raise describe(s, exc) from exc
    sentinels, conn, sentinel_kwargs = _sentinel_args(s, extra)
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        sentinels, sentinel_kwargs=sentinel_kwargs, **conn
    )
    assert s.sentinel_master is not None  # check() guarantees it
    master = sentinel.master_for(  # type: ignore[no-untyped-call]
        s.sentinel_master, redis_class=redis.Redis
    )
    return cast(redis.Redis, master)


@overload
def async_client(
    target: str, password: str | None = None, ca_file: str | None = None, **extra: Any
) -> redis.asyncio.Redis: ...
@overload
def async_client(
    target: RedisSettings, password: str | None = None, ca_file: str | None = None, **extra: Any
) -> AsyncRedis: ...
def async_client(
    target: RedisSettings | str,
    password: str | None = None,
    ca_file: str | None = None,
    **extra: Any,
) -> AsyncRedis:
    """An asyncio client (``decode_responses=True``) for ``target``; connects lazily."""
    s = settings_of(target, password, ca_file)
    check(s)
    opts = _options(s)
    opts.update(extra)
    if s.mode is RedisMode.STANDALONE:
        return redis.asyncio.Redis.from_url(s.url, **opts)
    if s.mode is RedisMode.CLUSTER:
        opts.pop("single_connection_client", None)
        return redis.asyncio.cluster.RedisCluster.from_url(
            s.url, startup_nodes=_cluster_nodes(s, redis.asyncio.cluster), **opts
        )
    sentinels, conn, sentinel_kwargs = _sentinel_args(s, extra)
    single = bool(conn.pop("single_connection_client", False))
    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        sentinels, sentinel_kwargs=sentinel_kwargs, **conn
    )
    assert s.sentinel_master is not None  # check() guarantees it
    client = cast(
        redis.asyncio.Redis,
        sentinel.master_for(s.sentinel_master, redis_class=redis.asyncio.Redis),
    )
    return client.client() if single else client


def is_cluster(client: SyncRedis | AsyncRedis) -> bool:
    """Whether ``client`` is a redis-py cluster client."""
    return isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster))


def describe(target: RedisSettings | str, exc: BaseException) -> BgqError:
    """The bgq error for a redis-py exception met while talking to ``target``.

    Topology mistakes become a :class:`ConfigError` naming the setting: a cluster node used in
    standalone mode answers MOVED; a standalone server used in cluster mode says cluster
    support is disabled; a Sentinel master nobody monitors. Anything else that means "cannot
    reach" becomes :class:`RedisUnavailable`; other errors are returned as ``RedisUnavailable``
    too only when they are connection errors, else wrapped as a ``BgqError`` with the text.
    """
    s = settings_of(target)
    where = describe_target(s)
    text = str(exc)
    if isinstance(exc, BgqError):
        return exc
    if _is_moved(exc):
        return ConfigError(
            f"Redis at {where} is a Redis Cluster node (it answered MOVED {text}) but "
            "BGQ_REDIS_MODE is standalone: set BGQ_REDIS_MODE=cluster"
        )
    if "cluster support disabled" in text or "Cluster mode is not enabled" in text:
        return ConfigError(
            f"BGQ_REDIS_MODE is cluster but {where} is not a Redis Cluster node (cluster "
            "support disabled): set BGQ_REDIS_MODE=standalone, or point BGQ_REDIS_URL at a "
            "cluster node"
        )
    not_found = (redis.sentinel.MasterNotFoundError, redis.asyncio.sentinel.MasterNotFoundError)
    if isinstance(exc, not_found):
        return ConfigError(
            f"no sentinel at {where} knows a reachable master named {s.sentinel_master!r} "
            "(BGQ_REDIS_SENTINEL_MASTER): check the name against `SENTINEL MASTERS`, and that "
            "the sentinels in BGQ_REDIS_URL / BGQ_REDIS_NODES are reachable"
        )
    if isinstance(exc, redis.exceptions.RedisClusterException) and "connected" in text:
        return RedisUnavailable(
            f"cannot reach any Redis Cluster seed of {where}: {exc}. Check BGQ_REDIS_URL and "
            "BGQ_REDIS_NODES, that the nodes run and are reachable, and BGQ_REDIS_PASSWORD."
        )
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)):
        return RedisUnavailable(
            f"cannot reach Redis at {where}: {exc}. Check BGQ_REDIS_URL"
            + (" / BGQ_REDIS_NODES" if s.mode is not RedisMode.STANDALONE else "")
            + ", that the server is running and reachable, and the password "
            "(BGQ_REDIS_PASSWORD)."
        )
    return BgqError(f"Redis at {where} failed: {exc}")


def _is_moved(exc: BaseException) -> bool:
    if isinstance(exc, (redis.exceptions.MovedError, redis.exceptions.AskError)):
        return True  # redis-py strips the MOVED/ASK word from these
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(
        ("MOVED", "ASK ")
    )


def unavailable(target: RedisSettings | str, exc: BaseException) -> BgqError:
    """The error to raise when Redis at ``target`` cannot be used (see :func:`describe`)."""
    return describe(target, exc)


async def probe(client: AsyncRedis, target: RedisSettings | str) -> str:
    """Check that ``client`` reaches a server of the configured topology; returns a summary
    (``"standalone 7.0.15"``, ``"cluster of 3 primaries"``, ...) or raises :func:`describe`'s
    error. One or two round trips; the operator runs it once per endpoint."""
    s = settings_of(target)
    try:
        info = await client.info("server")
        if isinstance(client, redis.asyncio.cluster.RedisCluster):
            return f"cluster of {len(client.get_primaries())} primaries"
        version = str(info.get("redis_version", "?"))
        cluster_info = await client.info("cluster")
        if int(cluster_info.get("cluster_enabled", 0)):
            raise redis.exceptions.ResponseError("MOVED (the server has cluster_enabled:1)")
        return f"{s.mode.value} {version}"
    except Exception as exc:
        raise describe(s, exc) from exc


_REDIS_PARAMS = frozenset(inspect.signature(redis.asyncio.Redis.__init__).parameters) - {
    "self",
    "host",
    "port",
    "connection_pool",
    "single_connection_client",
    "retry",
    "response_callbacks",
    "connection_class",
}


def _node_kwargs(cluster_kwargs: dict[str, Any]) -> dict[str, Any]:
    """A cluster client's connection settings that a plain client to one node accepts."""
    out = {k: v for k, v in cluster_kwargs.items() if k in _REDIS_PARAMS}
    cls = cluster_kwargs.get("connection_class")
    if isinstance(cls, type) and issubclass(cls, redis.asyncio.SSLConnection):
        out["ssl"] = True
    return out


class BlockingConnection:
    """One dedicated connection for a blocking read (``XREADGROUP BLOCK``) of one queue.

    On a cluster it is a plain connection to the primary that holds ``key``'s slot (redis-py's
    cluster client hands out pooled connections whose CLIENT ID a caller cannot know); on
    standalone and Sentinel it is a single-connection client sharing ``client``'s pool.
    :meth:`unblock` sends ``CLIENT UNBLOCK`` to that same node over another connection. After a
    MOVED/ASK (resharding) or a connection error (failover) call :meth:`reset`: the next
    :meth:`get` finds the slot's current owner.
    """

    def __init__(self, client: AsyncRedis, key: str) -> None:
        self.client = client
        self.key = key
        self._conn: redis.asyncio.Redis | None = None
        self.client_id: int | None = None
        """CLIENT ID of the dedicated connection, known after :meth:`get`."""

    async def get(self) -> redis.asyncio.Redis:
        """The dedicated connection (opened on first use, on the slot's current owner)."""
        if self._conn is None:
            c = self.client
            if isinstance(c, redis.asyncio.cluster.RedisCluster):
                await c.initialize()
                node = c.get_node_from_key(self.key)
                if node is None:
                    raise redis.exceptions.ConnectionError(f"no node holds the slot of {self.key}")
                kwargs = _node_kwargs(c.get_connection_kwargs())
                conn = redis.asyncio.Redis(
                    host=node.host, port=int(node.port), single_connection_client=True, **kwargs
                )
            else:
                conn = c.client()
            self.client_id = int(await conn.client_id())
            self._conn = conn
        return self._conn

    async def unblock(self) -> bool:
        """CLIENT UNBLOCK the dedicated connection (on its node); False if none is open."""
        if self._conn is None or self.client_id is None:
            return False
        if isinstance(self.client, redis.asyncio.cluster.RedisCluster):
            kw = self._conn.connection_pool.connection_kwargs
            other = redis.asyncio.Redis(
                host=kw["host"],
                port=kw["port"],
                single_connection_client=True,
                **_node_kwargs(self.client.get_connection_kwargs()),
            )
            try:
                return bool(await other.client_unblock(self.client_id))
            finally:
                await other.aclose()
        return bool(await self.client.client_unblock(self.client_id))

    async def reset(self, refresh_slots: bool = True) -> None:
        """Drop the connection; on a cluster also re-read the slot map (after MOVED/failover)."""
        conn, self._conn, self.client_id = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await conn.aclose()
        if refresh_slots and isinstance(self.client, redis.asyncio.cluster.RedisCluster):
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await self.client.nodes_manager.initialize()  # else the next get() retries

    async def aclose(self) -> None:
        """Close the dedicated connection."""
        await self.reset(refresh_slots=False)


def is_redirect(exc: BaseException) -> bool:
    """Whether ``exc`` is a cluster redirection (MOVED/ASK) or a failover symptom that a
    :class:`BlockingConnection` answers with :meth:`~BlockingConnection.reset`."""
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return True
    if _is_moved(exc):
        return True
    if isinstance(exc, redis.exceptions.ResponseError):
        return str(exc).startswith(("TRYAGAIN", "CLUSTERDOWN", "READONLY"))
    return isinstance(exc, redis.exceptions.ReadOnlyError)


def run_durable(
    client: SyncRedis,
    script: Any,
    keys: list[str],
    args: list[Any],
    *,
    replicas: int,
    timeout_ms: int,
) -> tuple[Any, int]:
    """Run ``script`` then ``WAIT replicas timeout_ms`` in ONE round trip on ONE connection (WAIT
    counts the replicas that have this connection's writes), on the node holding ``keys[0]``.

    Returns the script's reply and how many replicas confirmed. On a cluster the pipeline goes
    to the slot's primary directly (WAIT has no key a cluster pipeline could route by); a MOVED
    (resharding, failover) re-reads the slot map and tries again, once.
    """
    for attempt in range(3):
        target: Any = client
        if isinstance(client, redis.cluster.RedisCluster):
            node = client.get_node_from_key(keys[0])  # type: ignore[no-untyped-call]
            target = client.get_redis_connection(node)
        pipe = target.pipeline(transaction=False)
        script.pipe(pipe, keys, args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        try:
            reply, confirmed = pipe.execute()
            return reply, int(confirmed)
        except redis.exceptions.NoScriptError:
            target.script_load(script.text)
        except (redis.exceptions.MovedError, redis.exceptions.AskError):
            if not isinstance(client, redis.cluster.RedisCluster) or attempt == 2:
                raise
            client.nodes_manager.initialize()
    raise redis.exceptions.NoScriptError("script could not be loaded")


async def arun_durable(
    client: AsyncRedis,
    script: Any,
    keys: list[str],
    args: list[Any],
    *,
    replicas: int,
    timeout_ms: int,
) -> tuple[Any, int]:
    """The asyncio twin of :func:`run_durable` (on a cluster: a plain connection to the slot's
    primary, kept per client and node)."""
    for attempt in range(3):
        target: Any = client
        if isinstance(client, redis.asyncio.cluster.RedisCluster):
            await client.initialize()
            node = client.get_node_from_key(keys[0])
            if node is None:
                raise redis.exceptions.ConnectionError(f"no node holds the slot of {keys[0]}")
            cache = _node_clients.setdefault(id(client), {})
            target = cache.get(node.name)
            if target is None:
                target = redis.asyncio.Redis(
                    host=node.host,
                    port=int(node.port),
                    **_node_kwargs(client.get_connection_kwargs()),
                )
                cache[node.name] = target
        pipe = target.pipeline(transaction=False)
        script.pipe(pipe, keys, args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        try:
            reply, confirmed = await pipe.execute()
            return reply, int(confirmed)
        except redis.exceptions.NoScriptError:
            await target.script_load(script.text)
        except (redis.exceptions.MovedError, redis.exceptions.AskError):
            if not isinstance(client, redis.asyncio.cluster.RedisCluster) or attempt == 2:
                raise
            await client.nodes_manager.initialize()
    raise redis.exceptions.NoScriptError("script could not be loaded")


_node_clients: dict[int, dict[str, redis.asyncio.Redis]] = {}
"""Per asyncio cluster client (by id): plain clients of its nodes, for WAIT after a write."""


async def load_scripts(client: AsyncRedis, texts: list[str]) -> None:
    """SCRIPT LOAD each text where EVALSHA will run: every primary of a cluster (redis-py
    routes SCRIPT LOAD to all primaries), the server or current master otherwise. A NOSCRIPT
    later (a promoted replica, a restart) is answered by loading again (``bgq.scripts``)."""
    for text in texts:
        await client.script_load(text)


def translate(target: RedisSettings | str, exc: BaseException) -> BaseException:
    """THE mapping of redis-py failures to bgq's errors (every part uses it, once, at its I/O
    edge): topology mistakes -> :class:`ConfigError` naming the setting (:func:`describe`),
    unreachable -> :class:`RedisUnavailable`, refused -> :class:`RedisCommandError`; anything
    else is returned unchanged."""
    if isinstance(exc, BgqError):
        return exc
    if not isinstance(exc, (redis.RedisError, OSError)):
        return exc
    error = describe(target, exc)
    if type(error) is BgqError:  # no topology mistake, no connection failure: a refusal
        url = target.url if isinstance(target, RedisSettings) else target
        return RedisCommandError(f"Redis at {redact(url)} refused the command: {exc}")
    return error


@contextlib.contextmanager
def redis_errors(target: RedisSettings | str) -> Iterator[None]:
    """Raise redis-py failures inside the block as bgq errors (:func:`translate`)."""
    try:
        yield
    except BgqError:
        raise
    except (redis.RedisError, OSError) as exc:
        raise translate(target, exc) from exc


__all__ = [
    "AsyncRedis",
    "BlockingConnection",
    "SyncRedis",
    "arun_durable",
    "async_client",
    "check",
    "describe",
    "describe_target",
    "is_cluster",
    "is_redirect",
    "load_scripts",
    "probe",
    "redact",
    "redis_errors",
    "run_durable",
    "settings_of",
    "sync_client",
    "translate",
    "unavailable",
]
