"""Worker settings from ``BGQ_*`` environment variables (the only way the operator configures a
worker; the table is in docs/design.md)."""

from __future__ import annotations

import socket

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All worker settings; ``Settings()`` reads the environment, keyword arguments override."""

    model_config = SettingsConfigDict(env_prefix="BGQ_", extra="ignore", validate_default=True)

    redis_url: str = "redis://localhost:6379/0"
    redis_password: str | None = None
    redis_tls_ca_file: str | None = None
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
    http_port: int = Field(default=8080, ge=0, le=65535)
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


__all__ = ["Settings"]
