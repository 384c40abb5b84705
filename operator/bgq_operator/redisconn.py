"""The operator's own Redis connections: one client per Redis endpoint, shared by its queues.

A queue's endpoint is its URL plus password and CA, read from the spec or from the referenced
Secrets (the operator needs them to read demand; workers get them by ``secretKeyRef``). Queues
with equal endpoints share one client, so demand for all of them is one pipelined round trip.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bgq.connection import AsyncRedis, async_client, describe_target, redact
from bgq.settings import RedisMode, RedisSettings
from bgq_operator.errors import DependencyError
from bgq_operator.kube import Kube
from bgq_operator.spec import RedisSpec, SecretKeyRef

SOCKET_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect to one Redis (hashable: the key that groups queues)."""

    url: str
    password: str | None = None
    ca_pem: str | None = None
    mode: str = "Standalone"
    """``spec.redis.mode``: Standalone, Cluster or Sentinel."""
    nodes: tuple[str, ...] = ()
    sentinel_master: str | None = None

    @property
    def label(self) -> str:
        """The URL without secrets (safe for logs, events and metrics)."""
        if self.mode == "Standalone":
            return redact(self.url)
        return describe_target(self.settings())

    def settings(self, ca_file: str | None = None) -> RedisSettings:
        """The :class:`RedisSettings` of this endpoint (what workers get as BGQ_REDIS_*)."""
        return RedisSettings(
            mode=RedisMode(self.mode.lower()),
            url=self.url,
            password=self.password,
            tls_ca_file=ca_file,
            nodes=",".join(self.nodes),
            sentinel_master=self.sentinel_master,
        )


async def _secret_value(kube: Kube, namespace: str, ref: SecretKeyRef, what: str) -> str:
    secret = await kube.get_secret(namespace, ref.name)
    if secret is None:
        raise DependencyError(
            "SecretMissing",
            f"Secret {namespace}/{ref.name} (spec.redis.{what}) does not exist: create it "
            f"with key {ref.key!r}",
        )
    data = secret.get("data") or {}
    if ref.key not in data:
        raise DependencyError(
            "SecretKeyMissing",
            f"Secret {namespace}/{ref.name} has no key {ref.key!r} (spec.redis.{what}); "
            f"it has: {', '.join(sorted(data)) or 'no keys'}",
        )
    try:
        return base64.b64decode(data[ref.key]).decode().strip()
    except (ValueError, UnicodeDecodeError) as exc:
        raise DependencyError(
            "SecretUnreadable",
            f"Secret {namespace}/{ref.name} key {ref.key!r} is not UTF-8 text: {exc}",
        ) from None


async def resolve_endpoint(kube: Kube, namespace: str, spec: RedisSpec) -> Endpoint:
    """Read the referenced Secrets; raises :class:`DependencyError` naming what is missing."""
    if spec.url is not None:
        url = spec.url
        if spec.tls.enabled and url.startswith("redis://"):
            url = "rediss://" + url[len("redis://") :]
    else:
        assert spec.url_secret_ref is not None  # the spec validator guarantees one of them
        url = await _secret_value(kube, namespace, spec.url_secret_ref, "urlSecretRef")
        if not url.startswith(("redis://", "rediss://")):
            raise DependencyError(
                "InvalidRedisUrl",
                f"Secret {namespace}/{spec.url_secret_ref.name} key {spec.url_secret_ref.key!r}"
                " must hold a redis:// or rediss:// URL",
            )
    password = None
    if spec.password_secret_ref is not None:
        password = await _secret_value(
            kube, namespace, spec.password_secret_ref, "passwordSecretRef"
        )
    ca = None
    if spec.tls.ca_secret_ref is not None:
        ca = await _secret_value(kube, namespace, spec.tls.ca_secret_ref, "tls.caSecretRef")
    return Endpoint(
        url=url,
        password=password,
        ca_pem=ca,
        mode=spec.mode,
        nodes=tuple(spec.nodes or ()),
        sentinel_master=spec.sentinel_master,
    )


class RedisClients:
    """One asyncio Redis client per endpoint, created on first use."""

    def __init__(self) -> None:
        self._clients: dict[Endpoint, AsyncRedis] = {}
        self._ca_dir: Path | None = None

    def _ca_file(self, pem: str) -> str:
        if self._ca_dir is None:
            self._ca_dir = Path(tempfile.mkdtemp(prefix="bgq-operator-ca-"))
        path = self._ca_dir / (hashlib.sha256(pem.encode()).hexdigest()[:16] + ".pem")
        if not path.exists():
            path.write_text(pem)
        return str(path)

    def client(self, endpoint: Endpoint) -> AsyncRedis:
        """The shared client of ``endpoint`` (redis-py's cluster client for mode Cluster: a
        pipeline over many queues becomes one pipeline per node, sent concurrently)."""
        found = self._clients.get(endpoint)
        if found is None:
            ca_file = self._ca_file(endpoint.ca_pem) if endpoint.ca_pem else None
            found = async_client(
                endpoint.settings(ca_file),
                socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=SOCKET_TIMEOUT_S,
            )
            self._clients[endpoint] = found
        return found

    async def drop_unused(self, in_use: set[Endpoint]) -> None:
        """Close clients of endpoints no queue uses any more."""
        for endpoint in [e for e in self._clients if e not in in_use]:
            await self._clients.pop(endpoint).aclose()

    async def close(self) -> None:
        """Close every client."""
        await self.drop_unused(set())
