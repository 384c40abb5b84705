"""Kubernetes-native authorization for the gateway: ServiceAccount tokens, RBAC on queues.

A caller presents its projected ServiceAccount token (audience ``bgq``) as a bearer token. The
gateway asks the API server who it is (``TokenReview``, with the audience, so a token minted for
another audience is refused) and whether that identity may do the operation on the queue
(``SubjectAccessReview``). Permissions are RBAC rules on subresources of ``backgroundqueues`` in
group ``bgq.dev``, in the queue's namespace, with the queue's name as resource name:

=====================================  ===========================================
operation                              verb and resource
=====================================  ===========================================
enqueue (one or a batch)               ``create`` ``backgroundqueues/jobs``
read a job, queue statistics           ``get`` ``backgroundqueues/jobs``
cancel a job                           ``delete`` ``backgroundqueues/jobs``
replay / purge dead letters            ``update`` / ``delete`` ``backgroundqueues/deadletters``
pause / resume (the console)           ``update`` ``backgroundqueues/pause``
=====================================  ===========================================

These subresources do not exist as API endpoints: a SubjectAccessReview checks verbs against any
resource/subresource string, and RBAC rules can name them, which is all bgq needs. The chart ships
aggregated ClusterRoles ``bgq-enqueuer``, ``bgq-viewer`` and ``bgq-admin`` with these rules.

Answers are cached briefly (``cache_seconds``, default 10 s) so a busy producer costs the API
server two requests per interval, not two per job; a RoleBinding added or removed takes effect
within that time. The API server is called with the standard library (no extra dependency in the
worker image), in a thread, with a timeout; when it cannot be reached the request fails closed
(:class:`AuthUnavailable`, answered ``503``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgq.errors import BgqError, ConfigError

__all__ = ["GROUP", "RESOURCE", "AuthUnavailable", "Decision", "KubeAuth"]

GROUP = "bgq.dev"
RESOURCE = "backgroundqueues"
_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_CACHE_ENTRIES = 10_000


class AuthUnavailable(BgqError):  # noqa: N818 - like bgq.RedisUnavailable
    """The API server could not answer a review (the request is refused, not allowed)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :meth:`KubeAuth.authorize`.

    ``status``: 200 allowed, 401 the token is not a valid token for the audience, 403 the
    identity lacks the permission. ``user`` is the authenticated username (empty for 401).
    """

    status: int
    user: str = ""
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 200


class _TtlCache:
    """A small LRU map whose entries expire after ``ttl`` seconds."""

    def __init__(self, ttl: float, size: int = _CACHE_ENTRIES) -> None:
        self.ttl = ttl
        self.size = size
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if time.monotonic() >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if self.ttl <= 0:
            return
        self._items[key] = (time.monotonic() + self.ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


@dataclass(frozen=True, slots=True)
class _User:
    username: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]


class KubeAuth:
    """TokenReview + SubjectAccessReview against one API server.

    ``api_url``/``token_file``/``ca_file`` default to the pod's in-cluster configuration
    (:meth:`from_env` reads ``BGQ_KUBE_API_URL``, ``BGQ_KUBE_TOKEN_FILE``, ``BGQ_KUBE_CA_FILE``,
    ``BGQ_GATEWAY_KUBE_AUDIENCE`` and ``BGQ_GATEWAY_KUBE_CACHE_SECONDS`` to override them). The
    gateway's own token (``token_file``) needs only ``create`` on ``tokenreviews`` and
    ``subjectaccessreviews``; it is re-read on every call, since the kubelet rotates it.
    """

    def __init__(
        self,
        api_url: str,
        token_file: str | Path,
        ca_file: str | Path | None,
        *,
        audience: str = "bgq",
        cache_seconds: float = 10.0,
        timeout: float = 5.0,
    ) -> None:
        if not api_url.startswith("https://"):
            raise ConfigError(f"the Kubernetes API URL must be https://..., got {api_url!r}")
        self.api_url = api_url.rstrip("/")
        self.token_file = Path(token_file)
        self.audience = audience
        self.timeout = timeout
        try:
            self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the Kubernetes API CA file {ca_file}: {exc}") from None
        self._tokens = _TtlCache(cache_seconds)
        self._access = _TtlCache(cache_seconds)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> KubeAuth:
        """In-cluster configuration, with the ``BGQ_KUBE_*`` overrides (see the class doc)."""
        env = os.environ if environ is None else environ
        url = env.get("BGQ_KUBE_API_URL", "").strip()
        if not url:
            host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
            port = env.get("KUBERNETES_SERVICE_PORT", "443").strip()
            if not host:
                raise ConfigError(
                    "ServiceAccount-token auth needs the Kubernetes API: not in a pod "
                    "(KUBERNETES_SERVICE_HOST unset) and BGQ_KUBE_API_URL not set"
                )
            url = f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}"
        try:
            cache = float(env.get("BGQ_GATEWAY_KUBE_CACHE_SECONDS", "10"))
        except ValueError:
            raise ConfigError("BGQ_GATEWAY_KUBE_CACHE_SECONDS must be a number") from None
        return cls(
            url,
            env.get("BGQ_KUBE_TOKEN_FILE") or _SA_DIR / "token",
            env.get("BGQ_KUBE_CA_FILE") or _SA_DIR / "ca.crt",
            audience=env.get("BGQ_GATEWAY_KUBE_AUDIENCE", "bgq") or "bgq",
            cache_seconds=cache,
        )

    async def authorize(
        self, token: str, namespace: str, name: str, verb: str, subresource: str
    ) -> Decision:
        """May the holder of ``token`` do ``verb`` on ``backgroundqueues/<subresource>`` of queue
        ``namespace/name``? Raises :class:`AuthUnavailable` if the API server cannot answer."""
        user = await self._authenticate(token)
        if user is None:
            return Decision(401, reason=f"not a valid ServiceAccount token for audience "
                            f"{self.audience!r}")
        return await self._decide(user, namespace, name, verb, subresource)

    async def _decide(
        self, user: _User, namespace: str, name: str, verb: str, subresource: str
    ) -> Decision:
        """The SubjectAccessReview answer for ``user`` (cached), as a Decision."""
        key = (user, namespace, name, verb, subresource)
        allowed = self._access.get(key)
        if allowed is None:
            allowed = await self._review_access(user, namespace, name, verb, subresource)
            self._access.put(key, allowed)
        if not allowed:
            reason = (f"{user.username} may not {verb} {RESOURCE}/{subresource} "
                      f"(group {GROUP}) of queue {namespace}/{name}")
            return Decision(403, user.username, reason)
        return Decision(200, user.username)

    async def review_token(self, token: str) -> str | None:
        """The username a valid token for the audience belongs to, else None (TokenReview,
        cached). Raises :class:`AuthUnavailable` if the API server cannot answer."""
        user = await self._authenticate(token)
        return user.username if user is not None else None

    async def authorize_user(  # noqa: PLR0917 - authorize()'s order, plus the identity
        self,
        username: str,
        groups: tuple[str, ...],
        namespace: str,
        name: str,
        verb: str,
        subresource: str,
    ) -> Decision:
        """Like :meth:`authorize` for an identity an authenticating proxy vouched for (the
        console's proxy-header mode): a SubjectAccessReview only, no TokenReview."""
        if not username:
            return Decision(401, reason="no user")
        return await self._decide(
            _User(username, "", tuple(groups), ()), namespace, name, verb, subresource
        )

    async def _authenticate(self, token: str) -> _User | None:
        key = hashlib.sha256(token.encode()).digest()
        cached = self._tokens.get(key)
        if cached is not None:
            return cached if isinstance(cached, _User) else None
        status = await self._post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
             "spec": {"token": token, "audiences": [self.audience]}},
        )
        user: _User | None = None
        if status.get("authenticated") and self.audience in (status.get("audiences") or []):
            info = status.get("user") or {}
            user = _User(
                str(info.get("username", "")),
                str(info.get("uid", "")),
                tuple(info.get("groups") or ()),
                tuple(sorted((k, tuple(v)) for k, v in (info.get("extra") or {}).items())),
            )
        self._tokens.put(key, user if user is not None else False)
        return user

    async def _review_access(
        self, user: _User, namespace: str, name: str, verb: str, subresource: str
    ) -> bool:
        spec: dict[str, Any] = {
            "user": user.username,
            "groups": list(user.groups),
            "resourceAttributes": {
                "group": GROUP,
                "resource": RESOURCE,
                "subresource": subresource,
                "verb": verb,
                "namespace": namespace,
                "name": name,
            },
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        status = await self._post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
             "spec": spec},
        )
        return bool(status.get("allowed")) and not status.get("denied")

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._post_sync, path, body)

    def _post_sync(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            own_token = self.token_file.read_text().strip()
        except OSError as exc:
            raise AuthUnavailable(f"cannot read the gateway's own token: {exc}") from None
        request = urllib.request.Request(
            self.api_url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {own_token}", "Content-Type": "application/json",
                     "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._ssl) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AuthUnavailable(
                f"the API server refused the {body['kind']} ({exc.code}): check the gateway's "
                "RBAC (create on tokenreviews and subjectaccessreviews)"
            ) from None
        except (OSError, ValueError) as exc:
            message = f"the API server did not answer the {body['kind']}: {exc}"
            raise AuthUnavailable(message) from None
        status = answer.get("status")
        return status if isinstance(status, dict) else {}
