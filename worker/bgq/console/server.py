"""Run the console under uvicorn, configured from the environment (docs/console.md)."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from types import FrameType

import uvicorn

from bgq.console.app import ConsoleConfig, create_app
from bgq.errors import ConfigError
from bgq.kubeauth import KubeAuth
from bgq.protocol import QueueName

DEFAULT_PORT = 8090


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _secret_from(env: Mapping[str, str], name: str) -> str | None:
    """``NAME`` or the content of the file named by ``NAME_FILE``."""
    value = env.get(name, "").strip()
    path = env.get(f"{name}_FILE", "").strip()
    if not value and path:
        try:
            with open(path, encoding="utf-8") as handle:
                value = handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {name}_FILE {path}: {exc}") from None
    return value or None


def config_from_env(
    redis_url: str, queues: Sequence[str] = (), environ: Mapping[str, str] | None = None
) -> ConsoleConfig:
    """The console's configuration: ``queues`` (and ``BGQ_CONSOLE_QUEUES``, comma-separated),
    ``BGQ_CONSOLE_DISCOVER``, ``BGQ_CONSOLE_TOKEN[_FILE]``, ``BGQ_CONSOLE_SECRET[_FILE]``,
    ``BGQ_CONSOLE_SECURE_COOKIES``, ``BGQ_CONSOLE_AUTH_SERVICEACCOUNT`` (with the gateway's
    ``BGQ_KUBE_*`` / ``BGQ_GATEWAY_KUBE_AUDIENCE`` settings), ``BGQ_CONSOLE_PROXY_USER_HEADER``,
    ``BGQ_CONSOLE_PROXY_GROUPS_HEADER``, ``BGQ_CONSOLE_REFRESH_SECONDS``."""
    env = os.environ if environ is None else environ
    names = list(queues) + [q for q in env.get("BGQ_CONSOLE_QUEUES", "").split(",") if q.strip()]
    parsed = [QueueName.parse(q.strip()) for q in names]
    config = ConsoleConfig(
        redis_url=redis_url,
        queues=parsed,
        discover=_flag(env, "BGQ_CONSOLE_DISCOVER", True),
        token=_secret_from(env, "BGQ_CONSOLE_TOKEN"),
        secure_cookies=_flag(env, "BGQ_CONSOLE_SECURE_COOKIES"),
        proxy_user_header=env.get("BGQ_CONSOLE_PROXY_USER_HEADER", "").strip() or None,
        proxy_groups_header=env.get("BGQ_CONSOLE_PROXY_GROUPS_HEADER", "").strip() or None,
    )
    secret = _secret_from(env, "BGQ_CONSOLE_SECRET")
    if secret is not None:
        if len(secret) < 16:
            raise ConfigError("BGQ_CONSOLE_SECRET must have at least 16 characters")
        config.secret = secret
    refresh = env.get("BGQ_CONSOLE_REFRESH_SECONDS", "").strip()
    if refresh:
        try:
            config.refresh_seconds = float(refresh)
        except ValueError:
            config.refresh_seconds = 0
        if not 0.1 <= config.refresh_seconds <= 60:
            raise ConfigError("BGQ_CONSOLE_REFRESH_SECONDS must be between 0.1 and 60")
    if _flag(env, "BGQ_CONSOLE_AUTH_SERVICEACCOUNT"):
        config.kube_auth = KubeAuth.from_env(dict(env))
    return config


class _Server(uvicorn.Server):
    """uvicorn's server, but SIGTERM (a pod's normal stop) ends with exit code 0 after the
    graceful shutdown, like ``bgq gateway``; uvicorn would re-raise it (exit -15). SIGINT is
    re-raised as before (Ctrl-C: exit 130)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and isinstance(captured, list) and sig in captured:
            captured.remove(sig)


def serve(config: ConsoleConfig, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's graceful shutdown), with connection and header
    limits: at most 256 concurrent connections (503 over), 16 KiB of request head (h11), 5 s
    keep-alive; bodies are capped at 64 KiB by the application."""
    server = _Server(
        uvicorn.Config(
            create_app(config),
            host=host,
            port=port,
            http="h11",
            h11_max_incomplete_event_size=16 * 1024,
            limit_concurrency=256,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            proxy_headers=False,
            server_header=False,
            access_log=False,
            log_config=None,
            lifespan="on",
        )
    )
    server.run()


__all__ = ["DEFAULT_PORT", "config_from_env", "serve"]
