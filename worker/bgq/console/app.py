"""The console's Starlette application: pages, the live overview stream, mutations.

Everything HTTP comes from maintained libraries: routing, static files, sessions and responses
from Starlette, server-sent events from sse-starlette, CSRF protection (signed double-submit
cookie, checked on every non-GET request) from asgi-csrf, templates from Jinja2 with
autoescaping; uvicorn serves it (:func:`serve`). The one piece of our own is :class:`_Guard`, the
outermost layer: security headers on every answer, a request-body cap (``413``) before anything
reads a body, and a ``400`` instead of a traceback when the CSRF layer cannot parse a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
import redis.exceptions
from asgi_csrf import asgi_csrf
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from bgq.client import AsyncClient
from bgq.console.auth import (
    ANONYMOUS,
    CANCEL,
    MUTATIONS,
    PAUSE,
    PURGE,
    REPLAY,
    VIEW,
    VIEW_DEAD,
    ConsoleAuth,
    Viewer,
)
from bgq.console.data import ConsoleData
from bgq.errors import ConfigError, InvalidQueueName, JobNotFound, RedisUnavailable
from bgq.kubeauth import AuthUnavailable
from bgq.listing import LISTABLE
from bgq.protocol import QueueName, check_job_id

log = logging.getLogger("bgq.console")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
MAX_BODY_BYTES = 64 * 1024
"""Console forms are small: a larger request body is refused with 413 before it is read."""
TRUNCATE = 4000
"""Characters of args/kwargs/result/traceback shown on a page before it is cut."""
PAGE = 50
_ENTRY = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # a stream entry id (fullmatch)
_TASK = re.compile(r"[^\s\x00-\x1f\x7f]{1,256}")  # a task name to search for (fullmatch)
_MAX_ENTRIES = 500


@dataclass
class ConsoleConfig:
    """The console's settings (:func:`config_from_env` reads them from the environment)."""

    redis_url: str = "redis://localhost:6379/0"
    queues: list[QueueName] = field(default_factory=list)
    discover: bool = True
    token: str | None = None
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    """Signs session and CSRF cookies; set the same one on every replica."""
    secure_cookies: bool = False
    """Cookies only over HTTPS (set this behind a TLS-terminating proxy)."""
    refresh_seconds: float = 2.0
    max_streams: int = 100
    kube_auth: Any = None
    proxy_user_header: str | None = None
    proxy_groups_header: str | None = None
    session_seconds: int = 8 * 3600


class _Guard:
    """Security headers, the body cap and a 400 for unparsable bodies (outermost layer)."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"")
        if length and (not length.isdigit() or int(length) > self.max_body):
            status = 413 if length.isdigit() else 400
            await PlainTextResponse("request body too large\n" if status == 413 else
                                    "bad Content-Length\n", status)(scope, receive,
                                                                    send_with_headers)
            return
        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLargeError
            return message

        try:
            await self.app(scope, capped_receive, send_with_headers)
        except _TooLargeError:
            if not started:
                await PlainTextResponse("request body too large\n", 413)(
                    scope, receive, send_with_headers
                )
        except (UnicodeDecodeError, AssertionError, ValueError, IndexError) as exc:
            # asgi-csrf parses form bodies itself: a hostile one must not become a 500
            log.info("unparsable request refused: %s", type(exc).__name__)
            if not started:
                await PlainTextResponse("bad request body\n", 400)(
                    scope, receive, send_with_headers
                )


class _TooLargeError(Exception):
    pass


class _AlwaysProtect:
    """asgi-csrf's ``always_protect``: every path (a POST without cookies is checked too)."""

    def __contains__(self, path: object) -> bool:
        return True


def _root(request: Request) -> str:
    """Where the console is mounted (``""``, or ``/console`` in ``bgq gateway --console``):
    the prefix of every link, redirect and asset URL. Inside a Starlette ``Mount`` (the static
    files) ``root_path`` grows by the mount's path; ``app_root_path`` keeps the application's."""
    scope = request.scope
    return str(scope.get("app_root_path", scope.get("root_path", "")))


def _route_path(request: Request) -> str:
    """The request's path below :func:`_root` (ASGI's ``path`` includes ``root_path``)."""
    path, root = str(request.scope.get("path", "")), _root(request)
    return path[len(root) :] if root and path.startswith(root + "/") else path


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bgq.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["age"] = _age
    env.filters["clock"] = _clock
    return Jinja2Templates(env=env)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _clock(ms: int | float | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{int(ms) % 1000:03d}Z"


def _shown(value: Any, limit: int = TRUNCATE) -> tuple[str, bool]:
    """A value as indented JSON text, cut at ``limit`` characters (escaped by the template)."""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False,
                                                           default=str)  # fmt: skip
    if len(text) > limit:
        return text[:limit], True
    return text, False


class Console:
    """The routes over a :class:`ConsoleData` and a :class:`ConsoleAuth`."""

    def __init__(self, config: ConsoleConfig, client: AsyncClient | None = None) -> None:
        self.config = config
        self.client = client or AsyncClient(config.redis_url)
        self.data = ConsoleData(self.client, config.queues, config.discover)
        self.auth = ConsoleAuth(config.token, config.kube_auth, config.proxy_user_header,
                                config.proxy_groups_header)  # fmt: skip
        self.templates = _templates()
        self.streams = 0
        self.shared_age = min(1.0, config.refresh_seconds / 2)
        """Overview figures are computed at most this often for all viewers together."""

    # -- plumbing -----------------------------------------------------------------------------

    async def viewer(self, request: Request) -> Viewer:
        proxy = self.auth.from_proxy(dict(request.headers))
        if proxy is not None:
            return proxy
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            try:
                found = await self.auth.log_in(credentials)
            except AuthUnavailable:
                raise HTTPException(503, "authorization is unavailable, retry") from None
            if found is None:
                raise HTTPException(401, "wrong bearer token")
            return found
        session = request.session
        kind = session.get("kind")
        if kind == "token" and self.auth.token is not None:
            return Viewer("token", "console-token")
        if kind == "serviceaccount" and self.auth.kube is not None:
            return Viewer("serviceaccount", str(session.get("user", "")),
                          token=str(session.get("token", "")))  # fmt: skip
        return ANONYMOUS

    @staticmethod
    def queue(request: Request) -> QueueName:
        try:
            return QueueName.parse(
                f"{request.path_params['namespace']}/{request.path_params['name']}"
            )
        except InvalidQueueName as exc:
            raise HTTPException(400, str(exc)) from None

    async def require(self, viewer: Viewer, queue: QueueName, permission: tuple[str, str]) -> None:
        try:
            allowed = await self.auth.allowed(viewer, queue, permission)
        except AuthUnavailable:
            raise HTTPException(503, "authorization is unavailable, retry") from None
        if not allowed:
            status = 401 if viewer.anonymous else 403
            who = "anonymous viewers" if viewer.anonymous else viewer.name
            verb, sub = permission
            raise HTTPException(status, f"{who} may not {verb} backgroundqueues/{sub} of {queue}")

    async def may(self, viewer: Viewer, queue: QueueName, permission: tuple[str, str]) -> bool:
        try:
            return await self.auth.allowed(viewer, queue, permission)
        except AuthUnavailable:
            return False

    def render(self, request: Request, template: str, viewer: Viewer, status: int = 200,
               **context: Any) -> Response:  # fmt: skip
        csrf = request.scope.get("csrftoken")
        return self.templates.TemplateResponse(
            request, template, {
                "viewer": viewer, "root": _root(request),
                "csrftoken": csrf() if callable(csrf) else "",
                "can_log_in": self.auth.can_log_in, **context,
            }, status_code=status,
        )  # fmt: skip

    # -- pages --------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        names = await self.auth.visible(viewer, await self.data.queue_names())
        rows = await self.data.shared_overview(names, self.shared_age)
        needs_login = not names and not self.auth.open_view and viewer.anonymous
        return self.render(request, "overview.html", viewer, rows=rows, needs_login=needs_login)

    async def overview_json(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        names = await self.auth.visible(viewer, await self.data.queue_names())
        rows = await self.data.shared_overview(names, self.shared_age)
        return JSONResponse({"queues": [r.to_dict() for r in rows]})

    async def overview_events(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        if self.streams >= self.config.max_streams:
            return PlainTextResponse("too many live views, retry\n", 503,
                                     headers={"Retry-After": "5"})  # fmt: skip

        async def events() -> AsyncIterator[dict[str, Any]]:
            # counted from its first step: a stream whose client left before it started never
            # runs its finally
            self.streams += 1
            try:
                while True:
                    try:
                        names = await self.auth.visible(viewer, await self.data.queue_names())
                        rows = await self.data.shared_overview(names, self.shared_age)
                        payload = {"queues": [r.to_dict() for r in rows], "at": time.time()}
                        yield {"event": "overview", "data": json.dumps(payload)}
                    except (RedisUnavailable, redis.exceptions.RedisError, OSError) as exc:
                        log.warning("overview stream: redis unavailable: %s", exc)
                        yield {"event": "problem", "data": json.dumps(
                            {"message": "Redis is unreachable"})}  # fmt: skip
                    await asyncio.sleep(self.config.refresh_seconds)
            finally:
                self.streams -= 1

        return EventSourceResponse(events(), ping=15, send_timeout=10)

    async def queue_page(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        queue = self.queue(request)
        await self.require(viewer, queue, VIEW)
        rows = await self.data.overview([str(queue)])
        workers = await self.data.workers(queue)
        running = await self.data.running_jobs(queue, [w.consumer for w in workers])
        return self.render(
            request, "queue.html", viewer, q=queue, row=rows[0], workers=workers,
            running=running, states=LISTABLE,
            can_pause=await self.may(viewer, queue, PAUSE),
        )  # fmt: skip

    async def chart_json(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        queue = self.queue(request)
        await self.require(viewer, queue, VIEW)
        return JSONResponse((await self.data.chart(queue)).to_dict())

    async def jobs_page(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        queue = self.queue(request)
        await self.require(viewer, queue, VIEW)
        params = request.query_params
        job_id = params.get("id", "").strip()
        if job_id:
            try:
                check_job_id(job_id)
            except ConfigError as exc:
                raise HTTPException(400, str(exc)) from None
            return RedirectResponse(self._job_url(request, queue, job_id), 303)
        state = params.get("state", "") or None
        if state is not None and state not in LISTABLE:
            raise HTTPException(400, f"state must be one of {', '.join(LISTABLE)}")
        task = params.get("task", "").strip() or None
        if task is not None and not _TASK.fullmatch(task):
            raise HTTPException(400, "task must be a task name (no spaces or control characters)")
        cursor = params.get("cursor") or None
        if cursor is not None and len(cursor) > 100:
            raise HTTPException(400, "invalid cursor")
        try:
            page = await self.client.list_jobs(
                queue, states=[state] if state else None, task=task, limit=PAGE, cursor=cursor
            )
        except ConfigError as exc:
            raise HTTPException(400, str(exc)) from None
        next_url = None
        if page.cursor:
            query = {k: v for k, v in (("state", state), ("task", task)) if v}
            next_url = f"?{urlencode({**query, 'cursor': page.cursor})}"
        return self.render(request, "jobs.html", viewer, q=queue, page=page, state=state or "",
                           task=task or "", states=LISTABLE, next_url=next_url)  # fmt: skip

    async def dead_page(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        queue = self.queue(request)
        await self.require(viewer, queue, VIEW_DEAD)
        after = request.query_params.get("after") or None
        if after is not None and not _ENTRY.fullmatch(after):
            raise HTTPException(400, "after must be a dead-letter entry id")
        letters = await self.client.dead_letters(queue, limit=PAGE, after=after)
        shown = [(d, _shown(d.error, 300)[0]) for d in letters]
        return self.render(
            request, "dead.html", viewer, q=queue, letters=shown,
            next_after=letters[-1].entry_id if len(letters) == PAGE else None,
            can_replay=await self.may(viewer, queue, REPLAY),
            can_purge=await self.may(viewer, queue, PURGE),
        )  # fmt: skip

    async def job_page(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        queue = self.queue(request)
        await self.require(viewer, queue, VIEW)
        job_id = request.path_params["job"]
        try:
            check_job_id(job_id)
        except ConfigError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            info = await self.client.get(queue, job_id)
        except JobNotFound:
            raise HTTPException(404, f"job {job_id} not found in {queue} (or expired)") from None
        env = info.envelope
        traceparent = (env.headers.get("traceparent", "") if env else "") or ""
        parts = traceparent.split("-")
        trace_id = parts[1] if len(parts) == 4 else ""
        shown = {
            "args": _shown(env.args if env else None),
            "kwargs": _shown(env.kwargs if env else None),
            "result": _shown(info.result) if info.result is not None else None,
            "traceback": _shown(info.traceback) if info.traceback else None,
            "checkpoint": _shown(info.checkpoint) if info.checkpoint is not None else None,
        }
        durations = {
            "waited": (info.started_ms - info.enqueued_ms) / 1000
            if info.started_ms and info.enqueued_ms else None,
            "ran": (info.finished_ms - info.started_ms) / 1000
            if info.finished_ms and info.started_ms else None,
        }  # fmt: skip
        cancellable = str(info.state) in ("queued", "scheduled", "retrying", "running")
        return self.render(
            request, "job.html", viewer, q=queue, job=info, env=env, shown=shown,
            trace_id=trace_id, durations=durations,
            can_cancel=cancellable and await self.may(viewer, queue, CANCEL),
        )  # fmt: skip

    async def confirm_page(self, request: Request) -> Response:
        """Confirmation before a mutation: the form that really POSTs (no script needed)."""
        viewer = await self.viewer(request)
        queue = self.queue(request)
        action = request.query_params.get("action", "")
        if action not in MUTATIONS:
            raise HTTPException(400, f"action must be one of {', '.join(sorted(MUTATIONS))}")
        await self.require(viewer, queue, MUTATIONS[action])
        entries = self._entries(request.query_params.getlist("entry"))
        job = self._job_param(request.query_params.get("job", ""), action)
        return self.render(request, "confirm.html", viewer, q=queue, action=action,
                           entries=entries, job=job)  # fmt: skip

    async def action(self, request: Request) -> Response:
        """POST: replay / purge dead letters, cancel a job, pause / resume (CSRF-checked by the
        middleware before this runs; same-origin and the viewer's permission checked here)."""
        self._same_origin(request)
        viewer = await self.viewer(request)
        queue = self.queue(request)
        form = await request.form(max_files=0, max_fields=_MAX_ENTRIES + 10)
        action = str(form.get("action", ""))
        if action not in MUTATIONS:
            raise HTTPException(400, f"action must be one of {', '.join(sorted(MUTATIONS))}")
        await self.require(viewer, queue, MUTATIONS[action])
        entries = self._entries([str(v) for v in form.getlist("entry")])
        every = form.get("all") == "1"
        if action in ("replay", "purge") and not entries and not every:
            raise HTTPException(400, "name dead-letter entries, or all=1")
        log.info("console: %s %s on %s (entries: %s)", viewer.name or viewer.kind, action, queue,
                 "all" if every else len(entries))  # fmt: skip
        back = f"{_root(request)}/q/{queue}"
        if action == "replay":
            result = await self.client.replay_dead(queue, None if every else entries)
            note = f"replayed {result.replayed}, skipped {result.skipped}"
            back += "/dead"
        elif action == "purge":
            n = await self.client.purge_dead(queue, None if every else entries)
            note = f"purged {n}"
            back += "/dead"
        elif action == "cancel":
            job = self._job_param(str(form.get("job", "")), action)
            note = f"cancel: {await self.client.cancel(queue, job)}"
            back = self._job_url(request, queue, job)
        else:
            await self._pause(queue, action == "pause")
            note = "paused" if action == "pause" else "resumed"
        return RedirectResponse(f"{back}?{urlencode({'note': note})}", 303)

    async def _pause(self, queue: QueueName, paused: bool) -> None:
        # the same field `bgq pause` writes: `bgq resume` undoes a console pause and vice versa
        from bgq.control import paused_key
        from bgq.protocol import WAKE_CHANNEL

        key = paused_key(queue)
        if paused:
            await self.client.redis.hset(key, "cli", str(int(time.time() * 1000)))
        else:
            await self.client.redis.hdel(key, "cli")
        await self.client.redis.publish(WAKE_CHANNEL, str(queue))  # the operator decides again

    async def login_page(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        return self.render(request, "login.html", viewer, problem="")

    async def login(self, request: Request) -> Response:
        self._same_origin(request)
        form = await request.form(max_files=0, max_fields=5)
        token = str(form.get("token", ""))
        try:
            viewer = await self.auth.log_in(token) if len(token) < 16384 else None
        except AuthUnavailable:
            raise HTTPException(503, "authorization is unavailable, retry") from None
        if viewer is None:
            return self.render(request, "login.html", ANONYMOUS, status=401,
                               problem="That token was not accepted.")  # fmt: skip
        request.session.clear()
        request.session["kind"] = viewer.kind
        if viewer.kind == "serviceaccount":
            request.session.update({"user": viewer.name, "token": viewer.token})
        return RedirectResponse(f"{_root(request)}/", 303)

    async def logout(self, request: Request) -> Response:
        self._same_origin(request)
        request.session.clear()
        return RedirectResponse(f"{_root(request)}/", 303)

    async def livez(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(self, request: Request) -> Response:
        try:
            await asyncio.wait_for(self.client.redis.ping(), 2.0)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            log.warning("readyz: redis unreachable: %s", exc)  # the address only in the log
            return PlainTextResponse("redis unreachable\n", 503)
        return PlainTextResponse("ok\n")

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _entries(values: list[str]) -> list[str]:
        if len(values) > _MAX_ENTRIES:
            raise HTTPException(400, f"at most {_MAX_ENTRIES} entries at once")
        bad = [v for v in values if not _ENTRY.fullmatch(v)]
        if bad:
            raise HTTPException(400, "entry must be dead-letter entry ids")
        return values

    @staticmethod
    def _job_param(value: str, action: str) -> str:
        if action != "cancel":
            return ""
        try:
            return check_job_id(value)
        except ConfigError as exc:
            raise HTTPException(400, str(exc)) from None

    @staticmethod
    def _job_url(request: Request, queue: QueueName, job_id: str) -> str:
        return f"{_root(request)}/q/{queue}/job/{job_id}"

    @staticmethod
    def _same_origin(request: Request) -> None:
        """Refuse a cross-site POST even when it carries credentials the CSRF layer accepts
        (a bearer header added by a proxy): by Sec-Fetch-Site where the browser sends it, else
        by Origin against Host (an opaque ``null`` origin is left to the CSRF check)."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            if site not in ("same-origin", "none"):
                raise HTTPException(403, "cross-site request refused")
            return
        origin = request.headers.get("origin", "null")
        if origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
            raise HTTPException(403, "cross-origin request refused")

    async def error(self, request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException | RedisUnavailable | redis.exceptions.RedisError):
            log.error("console: %s %s failed", request.method, request.url.path, exc_info=exc)
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if isinstance(exc, RedisUnavailable | redis.exceptions.RedisError):
            log.warning("redis unavailable: %s", exc)
            status, detail = 503, "Redis is unreachable, retry"
        headers = {"Retry-After": "1"} if status == 503 else None
        if _route_path(request).startswith(("/api/", "/events/")) or "json" in request.headers.get(
            "accept", ""
        ):
            return JSONResponse({"error": detail}, status, headers=headers)
        try:
            viewer = ANONYMOUS if status in (401, 503) else await self.viewer(request)
        except HTTPException:
            viewer = ANONYMOUS
        response = self.render(request, "error.html", viewer, status=status, status_code=status,
                               detail=detail)  # fmt: skip
        if headers:
            response.headers.update(headers)
        return response


def create_app(config: ConsoleConfig, client: AsyncClient | None = None) -> ASGIApp:
    """The console as an ASGI application (mount it under a path with ``root_path``)."""
    console = Console(config, client)
    static = resources.files("bgq.console") / "static"
    routes = [
        Route("/", console.overview),
        Route("/api/overview", console.overview_json),
        Route("/events/overview", console.overview_events),
        Route("/q/{namespace}/{name}", console.queue_page),
        Route("/api/q/{namespace}/{name}/chart", console.chart_json),
        Route("/q/{namespace}/{name}/jobs", console.jobs_page),
        Route("/q/{namespace}/{name}/dead", console.dead_page),
        Route("/q/{namespace}/{name}/job/{job}", console.job_page),
        Route("/q/{namespace}/{name}/confirm", console.confirm_page),
        Route("/q/{namespace}/{name}/action", console.action, methods=["POST"]),
        Route("/login", console.login_page),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/livez", console.livez),
        Route("/readyz", console.readyz),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await console.client.close()

    handlers: Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: console.error,
        RedisUnavailable: console.error,
        redis.exceptions.RedisError: console.error,
        Exception: console.error,
    }
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                SessionMiddleware, secret_key=config.secret, session_cookie="bgq_console",
                max_age=config.session_seconds, same_site="strict",
                https_only=config.secure_cookies,
            ),
        ],
        exception_handlers=dict(handlers),
        lifespan=lifespan,
    )  # fmt: skip
    app.state.console = console
    protected = asgi_csrf(
        app,
        signing_secret=config.secret,
        always_protect=_AlwaysProtect(),
        cookie_samesite="Strict",
        cookie_secure=config.secure_cookies,
    )
    guarded = _Guard(protected)
    guarded.console = console  # type: ignore[attr-defined]
    return guarded


__all__ = ["CSP", "Console", "ConsoleConfig", "create_app"]
