"""Redis connections from a URL, an optional password override and an optional CA bundle."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio

from bgq.errors import ConfigError, RedisUnavailable


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


def _options(url: str, password: str | None, ca_file: str | None) -> dict[str, Any]:
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"redis URL {redact(url)!r} must start with redis://, rediss:// (TLS) or unix://"
        )
    opts: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
    }
    if password:
        opts["password"] = password
    if ca_file:
        if scheme != "rediss":
            raise ConfigError("a CA file (BGQ_REDIS_TLS_CA_FILE) needs a rediss:// URL")
        opts["ssl_ca_certs"] = ca_file
    return opts


def sync_client(url: str, password: str | None = None, ca_file: str | None = None) -> redis.Redis:
    """A blocking client (``decode_responses=True``)."""
    return redis.Redis.from_url(url, **_options(url, password, ca_file))


def async_client(
    url: str,
    password: str | None = None,
    ca_file: str | None = None,
    **extra: Any,
) -> redis.asyncio.Redis:
    """An asyncio client (``decode_responses=True``)."""
    opts = _options(url, password, ca_file)
    opts.update(extra)
    return redis.asyncio.Redis.from_url(url, **opts)


def unavailable(url: str, exc: BaseException) -> RedisUnavailable:
    """The error to raise when Redis at ``url`` cannot be reached."""
    return RedisUnavailable(
        f"cannot reach Redis at {redact(url)}: {exc}. Check BGQ_REDIS_URL / the url argument, "
        "that the server is running and reachable, and the password (BGQ_REDIS_PASSWORD)."
    )


__all__ = ["async_client", "redact", "sync_client", "unavailable"]
