"""The HTTP enqueue gateway: in-cluster services enqueue and inspect jobs over plain HTTP.

Endpoints (see docs/gateway.md for curl examples)::

    POST   /v1/queues/{namespace}/{name}/jobs         enqueue one job     -> 201 (200 if it existed)
    POST   /v1/queues/{namespace}/{name}/jobs:batch   enqueue many jobs   -> 201 / 200
    GET    /v1/queues/{namespace}/{name}/jobs/{id}    job state / result  -> 200 / 404
    DELETE /v1/queues/{namespace}/{name}/jobs/{id}    cancel a job        -> 200 / 404
    GET    /v1/queues/{namespace}/{name}              queue statistics    -> 200
    GET    /livez  /readyz  /metrics

Design points:

* Nothing is accepted silently: a job is answered 2xx only after Redis confirmed it; if Redis is
  unreachable the answer is ``503`` with ``Retry-After`` and the caller retries (safely, with a
  ``job_id``: enqueue with a caller job id is idempotent).
* Validation errors are ``400`` with a JSON body naming the offending field
  (``{"error": "invalid_request", "field": "args", "message": ...}``); bodies over the limit
  are ``413`` before being read.
* Optional bearer-token auth: when ``BGQ_GATEWAY_TOKEN`` is set (mount it from a Secret by
  reference), every ``/v1`` request needs ``Authorization: Bearer <token>``. Probes and
  ``/metrics`` stay open so kubelet and Prometheus need no secret.
* Optional ASGI applications under a path prefix (``bgq gateway --console`` mounts the web
  console at ``/console/``, see docs/gateway.md): served by :mod:`bgq.asgibridge` behind the
  same HTTP server and limits; the token guard is for ``/v1`` only (the console has its own
  login). This module never imports the console: the CLI builds it and passes it in.

The Redis work is behind :class:`QueueBackend`, implemented on top of ``bgq.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import json
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar

import prometheus_client
import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bgq import safejson
from bgq.asgibridge import ASGIApp, AsgiBridge
from bgq.client import AsyncClient, JobInfo, JobSpec
from bgq.connection import redact, unavailable
from bgq.errors import (
    ConfigError,
    InvalidQueueName,
    JobNotFound,
    PayloadError,
    PayloadTooLarge,
    RedisUnavailable,
)
from bgq.httpserver import HttpServer, Request, Response, StreamingResponse
from bgq.kubeauth import AuthUnavailable, KubeAuth
from bgq.protocol import PRIORITIES, QueueName, check_job_id
from bgq.stats import QueueDemand

__all__ = [
    "BatchRequest",
    "EnqueueOutcome",
    "EnqueueRequest",
    "Gateway",
    "QueueBackend",
    "RedisBackend",
    "job_document",
    "limits_from_env",
    "serve",
    "stats_document",
    "token_from_env",
]

log = logging.getLogger("bgq.gateway")

DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH = 1000
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # fullmatch only
_QUEUE = "/v1/queues/{namespace}/{name}"
_Body = TypeVar("_Body", bound=BaseModel)


# -- request models --------------------------------------------------------------------------------


class EnqueueRequest(BaseModel):
    """The JSON body of ``POST .../jobs`` (one element of ``jobs`` in a batch)."""

    # strict: JSON types are taken as sent (``true`` is not 1, ``"3"`` is not 3); ints are
    # still accepted where a float is expected.
    model_config = ConfigDict(extra="forbid", strict=True)

    task: Annotated[str, Field(min_length=1, max_length=256)]
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    job_id: str | None = None
    delay: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    priority: int | None = None
    unique_key: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    retries: Annotated[int, Field(ge=0, le=1000)] | None = None

    @field_validator("task")
    @classmethod
    def _task_is_a_name(cls, value: str) -> str:
        if value.strip() != value or any(ch.isspace() for ch in value):
            raise ValueError("must be a task name without whitespace")
        return value

    @field_validator("job_id")
    @classmethod
    def _job_id_charset(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_job_id(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_band(cls, value: object) -> int | None:
        """``"high"``/``"normal"``/``"low"`` or the band 0-2; ``true``, ``1.0``, ``"1"`` refused."""
        if value is None:
            return None
        if isinstance(value, str) and value.lower() in PRIORITIES:
            return PRIORITIES[value.lower()]
        if type(value) is int and value in (0, 1, 2):
            return value
        raise ValueError("must be high, normal, low or 0, 1, 2")


class BatchRequest(BaseModel):
    """The JSON body of ``POST .../jobs:batch``."""

    model_config = ConfigDict(extra="forbid")

    jobs: Annotated[list[EnqueueRequest], Field(min_length=1, max_length=MAX_BATCH)]


@dataclass(frozen=True)
class EnqueueOutcome:
    """What the backend did with one enqueue request.

    ``status``: ``enqueued`` (created), ``exists`` (a job with this id already existed: nothing
    changed), ``duplicate`` (the unique key is held by job ``id``: nothing created).
    """

    id: str
    created: bool
    status: str = "enqueued"


class QueueBackend(Protocol):
    """The Redis work the gateway needs. Every method raises :class:`RedisUnavailable` when
    Redis cannot be reached, and :class:`JobNotFound` for an unknown job."""

    async def enqueue(self, queue: str, request: EnqueueRequest) -> EnqueueOutcome: ...

    async def enqueue_many(
        self, queue: str, requests: list[EnqueueRequest]
    ) -> list[EnqueueOutcome]: ...

    async def get_job(self, queue: str, job_id: str) -> dict[str, Any]: ...

    async def cancel_job(self, queue: str, job_id: str) -> dict[str, Any]: ...

    async def queue_stats(self, queue: str) -> dict[str, Any]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


# -- the HTTP layer --------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    return Response.json(body, status=status)


_SERVER_ERRORS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    431: "headers_too_large",
    500: "internal_error",
    503: "overloaded",
    505: "http_version_not_supported",
}

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
"""Added to every gateway answer: API answers are never cached, sniffed, framed or scripted."""

_LIMIT_VARIABLES: dict[str, tuple[str, type[int] | type[float]]] = {
    "max_connections": ("BGQ_GATEWAY_MAX_CONNECTIONS", int),
    "max_buffered_bytes": ("BGQ_GATEWAY_MAX_BUFFERED_BYTES", int),
    "max_header_bytes": ("BGQ_GATEWAY_MAX_HEADER_BYTES", int),
    "header_timeout": ("BGQ_GATEWAY_HEADER_TIMEOUT_SECONDS", float),
    "idle_timeout": ("BGQ_GATEWAY_IDLE_TIMEOUT_SECONDS", float),
    "read_timeout": ("BGQ_GATEWAY_READ_TIMEOUT_SECONDS", float),
    "write_timeout": ("BGQ_GATEWAY_WRITE_TIMEOUT_SECONDS", float),
}


def limits_from_env(environ: dict[str, str] | None = None) -> dict[str, float]:
    """The HTTP server limits set in the environment (``BGQ_GATEWAY_MAX_CONNECTIONS``, ...).

    Only variables that are set appear; the rest keep :class:`bgq.httpserver.HttpServer`'s
    defaults. Raises :class:`bgq.ConfigError` naming a variable that is not a positive number.
    """
    env = os.environ if environ is None else environ
    limits: dict[str, float] = {}
    for option, (variable, kind) in _LIMIT_VARIABLES.items():
        text = env.get(variable, "").strip()
        if not text:
            continue
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0 or not math.isfinite(value):
            raise ConfigError(f"{variable} must be a positive {kind.__name__}, got {text!r}")
        limits[option] = value
    return limits


def _server_error(status: int, message: str) -> Response:
    """The HTTP server's own errors as JSON, like every other gateway error."""
    field = "body" if status in (411, 413) else None
    return _error(status, _SERVER_ERRORS.get(status, "error"), message, field)


def _field_path(loc: tuple[int | str, ...]) -> str:
    """pydantic ``("jobs", 3, "args")`` → ``jobs[3].args``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _validation_error(err: ValidationError) -> Response:
    first = err.errors()[0]
    field = _field_path(tuple(first["loc"]))
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    details = [
        {"field": _field_path(tuple(e["loc"])), "message": e["msg"]} for e in err.errors()[:20]
    ]
    body = {
        "error": "invalid_request",
        "field": field,
        "message": f"{field}: {message}",
        "details": details,
    }
    return Response.json(body, status=400)


class _Metrics:
    """The gateway's own Prometheus registry (requests by route and status, enqueued jobs)."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self.requests = prometheus_client.Counter(
            "bgq_gateway_requests",
            "HTTP requests served by the gateway, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = prometheus_client.Histogram(
            "bgq_gateway_request_duration_seconds",
            "Gateway request handling time, by route.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.enqueued = prometheus_client.Counter(
            "bgq_gateway_jobs_enqueued",
            "Jobs newly enqueued through the gateway (idempotent repeats not counted).",
            ["queue"],
            registry=self.registry,
        )
        self.redis_unavailable = prometheus_client.Counter(
            "bgq_gateway_redis_unavailable",
            "Requests answered 503 because Redis could not be reached.",
            registry=self.registry,
        )


Route = Callable[[Request], Awaitable[Response]]

_PERMISSIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", _QUEUE + "/jobs"): ("create", "jobs"),
    ("POST", _QUEUE + "/jobs:batch"): ("create", "jobs"),
    ("GET", _QUEUE + "/jobs/{id}"): ("get", "jobs"),
    ("DELETE", _QUEUE + "/jobs/{id}"): ("delete", "jobs"),
    ("GET", _QUEUE): ("get", "jobs"),
}
"""RBAC verb and ``backgroundqueues`` subresource each /v1 route needs (bgq.kubeauth)."""


class Gateway:
    """The gateway's HTTP routes over a :class:`QueueBackend`.

    ``token``: when set, ``/v1`` requests need ``Authorization: Bearer <token>``.
    ``apps``: ASGI applications by path prefix (``{"/console": app}``), served under
    ``prefix/`` with ``root_path = prefix``; their lifespan runs in :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        backend: QueueBackend,
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        limits: dict[str, float] | None = None,
        kube_auth: KubeAuth | None = None,
        apps: Mapping[str, ASGIApp] | None = None,
    ) -> None:
        self.backend = backend
        self.token = token or None
        self.kube_auth = kube_auth
        self.metrics = _Metrics()
        self.server = HttpServer(
            host,
            port,
            max_body_bytes=max_body_bytes,
            error_response=_server_error,
            guard=self._guard,
            default_headers=SECURITY_HEADERS,
            **(limits or {}),  # type: ignore[arg-type]
        )
        routes: list[tuple[str, str, Route]] = [
            ("POST", _QUEUE + "/jobs", self._enqueue),
            ("POST", _QUEUE + "/jobs:batch", self._enqueue_batch),
            ("GET", _QUEUE + "/jobs/{id}", self._get_job),
            ("DELETE", _QUEUE + "/jobs/{id}", self._cancel_job),
            ("GET", _QUEUE, self._stats),
            ("GET", "/livez", self._livez),
            ("GET", "/readyz", self._readyz),
            ("GET", "/metrics", self._metrics),
        ]
        for method, pattern, handler in routes:
            self.server.route(method, pattern, self._instrument(pattern, handler))
        self.bridges = [AsgiBridge(app, prefix) for prefix, app in (apps or {}).items()]
        for bridge in self.bridges:
            self.server.mount(bridge.root_path, self._count(bridge.root_path, bridge))
        prometheus_client.Gauge(
            "bgq_gateway_http_connections",
            "Open HTTP connections (capped; over the cap new ones are answered 503).",
            registry=self.metrics.registry,
        ).set_function(lambda: self.server.connections)
        prometheus_client.Gauge(
            "bgq_gateway_http_buffered_bytes",
            "Request-body bytes buffered right now, all connections (capped; over: 503).",
            registry=self.metrics.registry,
        ).set_function(lambda: self.server.buffered_bytes)

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self.server.port

    async def start(self) -> None:
        """Start serving (binds the port); mounted applications start first."""
        for bridge in self.bridges:
            await bridge.startup()
        await self.server.start()
        modes = [m for m, on in (("token", self.token), ("serviceaccount", self.kube_auth)) if on]
        mounted = "".join(f", {b.root_path}/ mounted" for b in self.bridges)
        log.info(
            "bgq gateway listening on %s:%s (auth: %s%s)",
            self.server.host,
            self.server.port,
            " + ".join(modes) or "off",
            mounted,
        )

    async def stop(self) -> None:
        """Stop serving; requests in progress finish first (streams end at once), then the
        mounted applications shut down."""
        await self.server.stop()
        for bridge in self.bridges:
            await bridge.shutdown()

    # -- plumbing ----------------------------------------------------------------------------

    async def _guard(self, request: Request) -> Response | None:
        """Authorize a routed request before its body is read (the server calls this).

        The static token, when set and presented, admits everything. Otherwise, with
        ServiceAccount auth on, the bearer token is reviewed and the queue's RBAC permission for
        the route checked (:mod:`bgq.kubeauth`). No auth configured: everything is admitted.
        """
        if not request.route.startswith("/v1/"):
            return None
        response = await self._authorize(request)
        if response is not None:
            self.metrics.requests.labels(request.route, str(response.status)).inc()
        return response

    async def _authorize(self, request: Request) -> Response | None:
        if self.token is None and self.kube_auth is None:
            return None
        queue, problem = self._queue(request)
        if problem:
            return problem
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        presented = credentials.strip() if scheme.lower() == "bearer" else ""
        if presented and self.token is not None and self._authorized(request):
            return None
        if presented and self.kube_auth is not None:
            method = "GET" if request.method == "HEAD" else request.method
            verb, subresource = _PERMISSIONS[(method, request.route)]
            namespace, name = queue.split("/", 1)
            try:
                decision = await self.kube_auth.authorize(
                    presented, namespace, name, verb, subresource
                )
            except AuthUnavailable as exc:
                log.warning("authorization unavailable: %s", exc)
                response = _error(503, "auth_unavailable", "authorization is unavailable, retry")
                response.headers["Retry-After"] = "1"
                return response
            if decision.allowed:
                return None
            if decision.status == 403:
                return _error(403, "forbidden", decision.reason)
        response = _error(401, "unauthorized", "missing or wrong bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="bgq"'
        return response

    def _instrument(self, pattern: str, handler: Route) -> Route:
        async def wrapped(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except RedisUnavailable as exc:
                self.metrics.redis_unavailable.inc()
                log.warning("redis unavailable: %s", exc)
                response = _error(503, "redis_unavailable", str(exc))
                response.headers["Retry-After"] = "1"
            except JobNotFound as exc:
                response = _error(404, "job_not_found", str(exc), field="id")
            except PayloadError as exc:
                status = 413 if isinstance(exc, PayloadTooLarge) else 400
                response = _error(status, "invalid_payload", str(exc), field="args")
            except ConfigError as exc:
                response = _error(400, "invalid_request", str(exc), field="body")
            self.metrics.requests.labels(pattern, str(response.status)).inc()
            self.metrics.latency.labels(pattern).observe(time.perf_counter() - started)
            return response

        return wrapped

    def _count(
        self, prefix: str, handler: Callable[[Request], Awaitable[Response | StreamingResponse]]
    ) -> Callable[[Request], Awaitable[Response | StreamingResponse]]:
        """A mounted application's requests in the gateway's metrics (route label: the prefix;
        the duration is until the answer starts)."""

        async def counted(request: Request) -> Response | StreamingResponse:
            started = time.perf_counter()
            status = "500"
            try:
                response = await handler(request)
                status = str(response.status)
                return response
            finally:
                self.metrics.requests.labels(prefix, status).inc()
                self.metrics.latency.labels(prefix).observe(time.perf_counter() - started)

        return counted

    def _authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    @staticmethod
    def _queue(request: Request) -> tuple[str, Response | None]:
        namespace = request.path_params["namespace"]
        name = request.path_params["name"]
        try:
            return str(QueueName.parse(f"{namespace}/{name}")), None
        except InvalidQueueName as exc:
            bad_namespace = len(namespace) > 63 or not _LABEL.fullmatch(namespace)
            field = "namespace" if bad_namespace else "name"
            return "", _error(400, "invalid_queue", str(exc), field=field)

    @staticmethod
    def _json_body(request: Request) -> tuple[Any, Response | None]:
        # The body is JSON whatever Content-Type says: `curl -d` sends a form content type,
        # and refusing it would only make the first try fail.
        if not request.body.strip():
            return None, _error(400, "invalid_request", "body: a JSON object is required", "body")
        try:
            # two levels more than an envelope: a batch wraps each job in {"jobs": [...]}
            return safejson.loads(request.body, max_depth=safejson.MAX_DEPTH + 2), None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            message = f"body: not valid JSON ({exc})"
            return None, _error(400, "invalid_json", message, field="body")
        except PayloadError as exc:
            return None, _error(400, "invalid_json", str(exc), field="body")

    def _queue_and_body(self, request: Request, model: type[_Body]) -> tuple[str, _Body] | Response:
        """The queue from the path and the JSON body validated as ``model``, or the 400 answer.

        Shared by the handlers that take a body, so each problem is answered the same way and
        in the same order: bad queue name, then missing or malformed JSON, then invalid fields.
        """
        queue, problem = self._queue(request)
        if problem:
            return problem
        data, problem = self._json_body(request)
        if problem:
            return problem
        try:
            return queue, model.model_validate(data)
        except ValidationError as exc:
            return _validation_error(exc)

    # -- routes ------------------------------------------------------------------------------

    async def _enqueue(self, request: Request) -> Response:
        parsed = self._queue_and_body(request, EnqueueRequest)
        if isinstance(parsed, Response):
            return parsed
        queue, job = parsed
        outcome = await self.backend.enqueue(queue, job)
        if outcome.created:
            self.metrics.enqueued.labels(queue).inc()
        return Response.json(
            {
                "id": outcome.id,
                "queue": queue,
                "status": outcome.status,
                "created": outcome.created,
            },
            status=201 if outcome.created else 200,
        )

    async def _enqueue_batch(self, request: Request) -> Response:
        parsed = self._queue_and_body(request, BatchRequest)
        if isinstance(parsed, Response):
            return parsed
        queue, batch = parsed
        outcomes = await self.backend.enqueue_many(queue, batch.jobs)
        created = sum(1 for o in outcomes if o.created)
        if created:
            self.metrics.enqueued.labels(queue).inc(created)
        return Response.json(
            {
                "queue": queue,
                "jobs": [{"id": o.id, "status": o.status, "created": o.created} for o in outcomes],
                "created": created,
            },
            status=201 if created else 200,
        )

    async def _get_job(self, request: Request) -> Response:
        queue, problem = self._queue(request)
        if problem:
            return problem
        return Response.json(await self.backend.get_job(queue, request.path_params["id"]))

    async def _cancel_job(self, request: Request) -> Response:
        queue, problem = self._queue(request)
        if problem:
            return problem
        return Response.json(await self.backend.cancel_job(queue, request.path_params["id"]))

    async def _stats(self, request: Request) -> Response:
        queue, problem = self._queue(request)
        if problem:
            return problem
        return Response.json(await self.backend.queue_stats(queue))

    async def _livez(self, request: Request) -> Response:
        return Response(body=b"ok\n")

    async def _readyz(self, request: Request) -> Response:
        try:
            await asyncio.wait_for(self.backend.ping(), 2.0)
        except (RedisUnavailable, TimeoutError) as exc:
            # The probe is unauthenticated: the Redis address goes to the log, not the answer.
            log.warning("readyz: redis unreachable: %s", exc or "timeout")
            return Response(status=503, body=b"redis unreachable\n")
        return Response(body=b"ok\n")

    async def _metrics(self, request: Request) -> Response:
        return Response(
            body=prometheus_client.generate_latest(self.metrics.registry),
            content_type=prometheus_client.CONTENT_TYPE_LATEST,
        )


def stats_document(queue: str, demand: QueueDemand, now_ms: int) -> dict[str, Any]:
    """A queue's statistics as JSON: ``GET /v1/queues/{ns}/{name}`` and ``bgq stats --json``."""
    return {
        "queue": queue,
        "backlog": demand.backlog,
        "in_flight": demand.in_flight,
        "delayed": demand.delayed,
        "due": demand.due,
        "dead": demand.dead,
        "oldest_ready_age_seconds": round(demand.oldest_ready_age_ms / 1000, 3),
        "workers": [
            {
                "consumer": w.consumer,
                "pod": w.pod,
                "pid": w.pid,
                "state": w.state,
                "in_flight": w.in_flight,
                "concurrency": w.concurrency,
                "oldest_running_seconds": (
                    round(max(0, now_ms - w.oldest_started_ms) / 1000, 3)
                    if w.oldest_started_ms
                    else None
                ),
                "heartbeat_age_seconds": round(max(0, now_ms - w.heartbeat_ms) / 1000, 3),
                "version": w.version,
            }
            for w in sorted(demand.workers, key=lambda w: w.consumer)
        ],
    }


def _iso(ms: int) -> str | None:
    if not ms:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _progress_document(info: JobInfo) -> dict[str, Any] | None:
    p = info.progress
    if p is None:
        return None
    return {"fraction": p.fraction, "detail": p.detail, "updated_at": _iso(p.updated_ms)}


def job_document(info: JobInfo) -> dict[str, Any]:
    """A job's record as JSON: ``GET .../jobs/{id}`` and ``bgq job --json``."""
    env = info.envelope
    document: dict[str, Any] = _json_safe(
        {
            "id": info.id,
            "queue": info.queue,
            "task": info.task,
            "state": str(info.state),
            "attempt": info.attempt,
            "max_retries": info.max_retries,
            "enqueued_at": _iso(info.enqueued_ms),
            "started_at": _iso(info.started_ms),
            "finished_at": _iso(info.finished_ms),
            "result": info.result,
            "error": info.error or None,
            "reason": info.reason or None,
            "traceback": info.traceback or None,
            "lease_expiries": info.lease_expiries,
            "cancel_requested": info.cancel_requested,
            "progress": _progress_document(info),
            "checkpoint": info.checkpoint,
            "args": env.args if env else None,
            "kwargs": env.kwargs if env else None,
            "priority": env.priority if env else None,
            "timeout": env.timeout if env else None,
            "unique_key": env.unique_key if env else None,
            "headers": env.headers if env else None,
        }
    )
    return document


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def token_from_env() -> str | None:
    """``BGQ_GATEWAY_TOKEN`` (or the file named by ``BGQ_GATEWAY_TOKEN_FILE``), if set."""
    token = os.environ.get("BGQ_GATEWAY_TOKEN", "").strip()
    path = os.environ.get("BGQ_GATEWAY_TOKEN_FILE", "").strip()
    if not token and path:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    return token or None


# -- the Redis backend -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _redis_errors(url: str) -> AsyncIterator[None]:
    """Any Redis failure (connection, timeout, a replica refusing writes...) is a 503."""
    try:
        yield
    except RedisUnavailable:
        raise
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise unavailable(url, exc) from exc
    except redis.exceptions.RedisError as exc:
        # READONLY after a failover, OOM, BUSY, LOADING...: retryable, and nothing was accepted
        raise RedisUnavailable(f"Redis at {redact(url)} refused the request: {exc}") from exc


def _spec(request: EnqueueRequest) -> JobSpec:
    return JobSpec(
        task=request.task,
        args=request.args,
        kwargs=request.kwargs,
        job_id=request.job_id,
        delay=request.delay,
        priority=request.priority if request.priority is not None else 1,
        unique_key=request.unique_key,
        timeout=request.timeout,
        retries=request.retries,
    )


class RedisBackend:
    """:class:`QueueBackend` on ``bgq.AsyncClient``: the protocol's own enqueue script."""

    def __init__(self, client: AsyncClient, url: str) -> None:
        self.client = client
        self.url = url  # for error messages (redacted)

    async def enqueue(self, queue: str, request: EnqueueRequest) -> EnqueueOutcome:
        async with _redis_errors(self.url):
            job = await self.client.enqueue_many(queue, [_spec(request)])
        return EnqueueOutcome(job[0].id, job[0].created, job[0].status)

    async def enqueue_many(
        self, queue: str, requests: list[EnqueueRequest]
    ) -> list[EnqueueOutcome]:
        async with _redis_errors(self.url):
            jobs = await self.client.enqueue_many(queue, [_spec(r) for r in requests])
        return [EnqueueOutcome(j.id, j.created, j.status) for j in jobs]

    async def get_job(self, queue: str, job_id: str) -> dict[str, Any]:
        async with _redis_errors(self.url):
            info = await self.client.get(queue, job_id)
        return job_document(info)

    async def cancel_job(self, queue: str, job_id: str) -> dict[str, Any]:
        async with _redis_errors(self.url):
            outcome = await self.client.cancel(queue, job_id)
        if outcome == "missing":
            raise JobNotFound(f"job {job_id!r} not found in queue {queue}")
        return {
            "id": job_id,
            "queue": queue,
            "outcome": outcome,
            "cancelled": outcome in ("cancelled", "cancelling"),
        }

    async def queue_stats(self, queue: str) -> dict[str, Any]:
        async with _redis_errors(self.url):
            demand = await self.client.stats(queue)
        return stats_document(queue, demand, int(time.time() * 1000))

    async def ping(self) -> None:
        async with _redis_errors(self.url):
            await self.client.redis.ping()

    async def close(self) -> None:
        await self.client.close()


async def serve(
    *,
    redis_url: str | None = None,
    host: str = "0.0.0.0",
    port: int | None = None,
    token: str | None = None,
    ready: Callable[[Gateway], None] | None = None,
    stop: asyncio.Event | None = None,
    apps: Mapping[str, ASGIApp] | None = None,
) -> None:
    """Run the gateway until SIGTERM/SIGINT (or ``stop`` is set), then stop gracefully.

    ``port`` defaults to ``BGQ_GATEWAY_PORT``, else 8080; ``token`` to :func:`token_from_env`.
    ``ready`` is called once the port is bound (tests use it to learn the port). ``apps``:
    ASGI applications to mount by prefix (``bgq gateway --console``).
    """
    import signal

    if port is None:
        port = int(os.environ.get("BGQ_GATEWAY_PORT", DEFAULT_PORT))
    max_body = int(os.environ.get("BGQ_GATEWAY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
    url = redis_url or os.environ.get("BGQ_REDIS_URL") or "redis://localhost:6379/0"
    limits = limits_from_env()
    kube_auth = None
    if os.environ.get("BGQ_GATEWAY_AUTH_SERVICEACCOUNT", "").strip().lower() in ("1", "true"):
        kube_auth = KubeAuth.from_env()
    client = AsyncClient(url, max_payload_bytes=max_body)
    gateway = Gateway(
        RedisBackend(client, url),
        host=host,
        port=port,
        token=token if token is not None else token_from_env(),
        max_body_bytes=max_body,
        limits=limits,
        kube_auth=kube_auth,
        apps=apps,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        await gateway.start()
        if ready is not None:
            ready(gateway)
        await stop.wait()
        log.info("bgq gateway stopping")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await gateway.stop()
        await client.close()
