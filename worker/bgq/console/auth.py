"""Who looks at the console, and what they may do: the gateway's model, for people.

A viewer is one of:

* ``token``: logged in with the static console token (``BGQ_CONSOLE_TOKEN``) — may do everything;
* ``serviceaccount``: logged in with (or sending as ``Authorization: Bearer``) a Kubernetes token
  for the audience — every permission is a SubjectAccessReview on ``backgroundqueues``
  subresources of the queue (:mod:`bgq.kubeauth`), as for the gateway;
* ``proxy``: an authenticating proxy in front of the console vouched for the user (and groups)
  in request headers (``BGQ_CONSOLE_PROXY_USER_HEADER``, ``..._GROUPS_HEADER``) — permissions
  by SubjectAccessReview for that user; only enable this when the proxy is the console's only
  way in (the chart's NetworkPolicy);
* ``anonymous``: without ServiceAccount or proxy auth configured, everyone may look (read-only);
  with them, an anonymous viewer sees nothing until logged in.

Mutations are never allowed to anonymous viewers: the console is read-only by default.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from bgq.kubeauth import AuthUnavailable, KubeAuth
from bgq.protocol import QueueName

log = logging.getLogger("bgq.console")

# (verb, backgroundqueues subresource) of each console operation (docs/console.md)
VIEW = ("get", "jobs")
VIEW_DEAD = ("get", "deadletters")
REPLAY = ("update", "deadletters")
PURGE = ("delete", "deadletters")
CANCEL = ("delete", "jobs")
PAUSE = ("update", "pause")
MUTATIONS = {"replay": REPLAY, "purge": PURGE, "cancel": CANCEL, "pause": PAUSE,
             "resume": PAUSE}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Viewer:
    """The person (or program) behind a request."""

    kind: str
    """``anonymous`` | ``token`` | ``serviceaccount`` | ``proxy``"""
    name: str = ""
    token: str = ""
    groups: tuple[str, ...] = ()

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"


ANONYMOUS = Viewer("anonymous")


class ConsoleAuth:
    """Identify viewers and answer permission questions (fail closed)."""

    def __init__(
        self,
        token: str | None = None,
        kube: KubeAuth | None = None,
        proxy_user_header: str | None = None,
        proxy_groups_header: str | None = None,
    ) -> None:
        self.token = token or None
        self.kube = kube
        self.proxy_user_header = (proxy_user_header or "").lower() or None
        self.proxy_groups_header = (proxy_groups_header or "").lower() or None

    @property
    def open_view(self) -> bool:
        """Anonymous viewers may look (no per-person authorization configured)."""
        return self.kube is None

    @property
    def can_log_in(self) -> bool:
        return self.token is not None or self.kube is not None

    def from_proxy(self, headers: dict[str, str]) -> Viewer | None:
        """The proxy-vouched viewer of a request, if proxy mode is on and the header is set."""
        if self.proxy_user_header is None:
            return None
        user = headers.get(self.proxy_user_header, "").strip()
        if not user:
            return None
        groups: tuple[str, ...] = ()
        if self.proxy_groups_header:
            raw = headers.get(self.proxy_groups_header, "")
            groups = tuple(g.strip() for g in raw.split(",") if g.strip())
        return Viewer("proxy", user, groups=groups)

    async def log_in(self, token: str) -> Viewer | None:
        """The viewer a presented token makes (static token first, then TokenReview), or None.
        Raises :class:`AuthUnavailable` when the API server cannot answer."""
        token = token.strip()
        if not token:
            return None
        if self.token is not None and hmac.compare_digest(token.encode(), self.token.encode()):
            return Viewer("token", "console-token")
        if self.kube is not None:
            user = await self.kube.review_token(token)
            if user:
                return Viewer("serviceaccount", user, token=token)
        return None

    async def allowed(self, viewer: Viewer, queue: QueueName, permission: tuple[str, str]) -> bool:
        """May ``viewer`` do ``permission`` (verb, subresource) on ``queue``? Raises
        :class:`AuthUnavailable` when the API server cannot answer (callers: 503 or hide)."""
        verb, subresource = permission
        if viewer.kind == "token":
            return True
        if viewer.kind == "anonymous":
            return self.open_view and verb == "get"
        if self.kube is None:
            return verb == "get"  # a proxy user without RBAC configured: look only
        if viewer.kind == "serviceaccount":
            decision = await self.kube.authorize(
                viewer.token, queue.namespace, queue.name, verb, subresource
            )
        else:
            decision = await self.kube.authorize_user(
                viewer.name, viewer.groups, queue.namespace, queue.name, verb, subresource
            )
        return decision.allowed

    async def visible(self, viewer: Viewer, queues: list[str]) -> list[str]:
        """The queues ``viewer`` may look at (an unreachable API server hides them all)."""
        if viewer.kind == "token" or (viewer.anonymous and self.open_view):
            return queues
        out = []
        for name in queues:
            try:
                if await self.allowed(viewer, QueueName.parse(name), VIEW):
                    out.append(name)
            except AuthUnavailable as exc:
                log.warning("authorization unavailable: %s", exc)
                return []
        return out


__all__ = ["ANONYMOUS", "MUTATIONS", "ConsoleAuth", "Viewer"]
