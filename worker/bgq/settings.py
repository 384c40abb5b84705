"""Worker settings from ``BGQ_*`` environment variables (the only way the operator configures a
worker; the table is in docs/design.md)."""

from __future__ import annotations

import enum
import socket

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
"""The one default Redis URL of every part (worker, clients, CLI, gateway)."""


class RedisMode(enum.StrEnum):
    """How bgq finds its Redis (``BGQ_REDIS_MODE``)."""

    STANDALONE = "standalone"
    """One server (or a proxy in front of one): ``BGQ_REDIS_URL`` is the server."""
    CLUSTER = "cluster"
    """Redis Cluster: ``BGQ_REDIS_URL`` is one seed node, ``BGQ_REDIS_NODES`` more seeds."""
    SENTINEL = "sentinel"
    """Sentinel: ``BGQ_REDIS_URL`` is one sentinel (its path the db), ``BGQ_REDIS_NODES`` more
    sentinels, ``BGQ_REDIS_SENTINEL_MASTER`` the master's name."""


class RedisSettings(BaseSettings):
    """Where and how every part of bgq connects to Redis: ONE object for worker, clients, CLI,
    gateway and operator (``RedisSettings()`` reads ``BGQ_REDIS_*``; keywords override).

    The URL's scheme (``rediss://`` for TLS), user, password and db apply to the data nodes in
    every mode; ``BGQ_REDIS_PASSWORD`` overrides the URL's password. Checked by
    :func:`bgq.connection.check`, which names the setting that is wrong.
    """

    model_config = SettingsConfigDict(
        env_prefix="BGQ_REDIS_", extra="ignore", frozen=True, validate_default=True
    )

    mode: RedisMode = RedisMode.STANDALONE
    url: str = DEFAULT_REDIS_URL
    password: str | None = None
    tls_ca_file: str | None = None
    nodes: str = ""
    """Comma-separated ``host:port`` list: more cluster seeds or more sentinels."""
    sentinel_master: str | None = None

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in {m.value for m in RedisMode}:
                raise ValueError(
                    f"BGQ_REDIS_MODE must be standalone, cluster or sentinel, not {value!r}"
                )
        return value

    @property
    def node_list(self) -> list[tuple[str, int]]:
        """``nodes`` parsed; raises ``ValueError`` naming BGQ_REDIS_NODES on a bad entry."""
        out: list[tuple[str, int]] = []
        for raw in self.nodes.split(","):
            item = raw.strip()
            if not item:
                continue
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"BGQ_REDIS_NODES entry {item!r} is not host:port (e.g. redis-1:6379)"
                )
            out.append((host.strip("[]"), int(port)))
        return out


class Settings(BaseSettings):
    """All worker settings; ``Settings()`` reads the environment, keyword arguments override."""

    model_config = SettingsConfigDict(env_prefix="BGQ_", extra="ignore", validate_default=True)

    redis_url: str = DEFAULT_REDIS_URL
    redis_password: str | None = None
    redis_tls_ca_file: str | None = None
    redis_mode: str = "standalone"
    redis_nodes: str = ""
    redis_sentinel_master: str | None = None
    queue: str | None = None
    namespace: str | None = None
    tasks_module: str | None = None
    concurrency: int = Field(default=10, ge=1, le=100_000)
    prefetch: int | None = Field(default=None, ge=0)
    """Jobs fetched beyond the running ones (default: equal to concurrency)."""
    drain_seconds: float = Field(default=25, ge=0)
    lease_seconds: float = Field(default=30, gt=0)
    heartbeat_seconds: float = Field(default=2, gt=0)
    max_deliveries: int = Field(default=5, ge=1)
    default_timeout_seconds: float = Field(default=300, gt=0)
    default_max_retries: int = Field(default=3, ge=0)
    backoff_base_seconds: float = Field(default=1, ge=0)
    backoff_max_seconds: float = Field(default=300, ge=0)
    result_ttl_seconds: int = Field(default=86400, ge=1)
    dead_retention_seconds: int = Field(default=604800, ge=1)
    http_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of /livez, /readyz, /metrics: unset tries 8080 and falls back to a free port when
    another worker on the host has it; set explicitly it must be free; 0 disables."""
    pod_name: str = ""
    log_level: str = "INFO"
    log_format: str = "json"
    livez_max_lag_seconds: float = Field(default=10, gt=0)
    """/livez fails when the event loop has not run for this long."""
    thread_pool_size: int | None = Field(default=None, ge=1)
    """Threads for plain ``def`` tasks (default: concurrency)."""
    process_pool_size: int | None = Field(default=None, ge=1)
    """Concurrent child processes for ``cpu_bound`` tasks (default: CPU count)."""
    max_payload_bytes: int = Field(default=1_048_576, ge=256)
    otel: bool = False
    """OpenTelemetry spans per attempt (``bgq.otel``; needs ``bgq[otel]``, an SDK configured
    by the tasks module or ``opentelemetry-instrument``). Without the package: a warning."""

    @property
    def redis(self) -> RedisSettings:
        """The Redis connection settings (the one object :mod:`bgq.connection` takes)."""
        return RedisSettings(
            mode=self.redis_mode,  # type: ignore[arg-type]  # validated by RedisSettings
            url=self.redis_url,
            password=self.redis_password,
            tls_ca_file=self.redis_tls_ca_file,
            nodes=self.redis_nodes,
            sentinel_master=self.redis_sentinel_master,
        )

    @field_validator("redis_mode")
    @classmethod
    def _redis_mode(cls, value: str) -> str:
        return RedisSettings(mode=value).mode.value  # type: ignore[arg-type]

    @field_validator("pod_name")
    @classmethod
    def _pod_name(cls, value: str) -> str:
        return value or socket.gethostname()

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        value = value.lower()
        if value not in ("json", "text"):
            raise ValueError("BGQ_LOG_FORMAT must be 'json' or 'text'")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.upper()
        if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("BGQ_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value


class ClientSettings(BaseSettings):
    """What a producer client takes from ``BGQ_*`` variables when its arguments leave it open
    (read once, when the client is constructed: the library user's entry point)."""

    model_config = SettingsConfigDict(env_prefix="BGQ_", extra="ignore")

    redis_url: str = DEFAULT_REDIS_URL
    redis_password: str | None = None
    redis_tls_ca_file: str | None = None
    max_payload_bytes: int = Field(default=1_048_576, ge=256)
    result_ttl_seconds: int = Field(default=86400, ge=1)


__all__ = ["DEFAULT_REDIS_URL", "ClientSettings", "RedisMode", "RedisSettings", "Settings"]
