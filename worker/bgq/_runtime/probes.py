"""/livez, /readyz and /metrics of a worker process.

Port choice: ``BGQ_HTTP_PORT`` set explicitly (including by the operator) must be served, or
the worker refuses to start with a clear error. Unset, the worker tries the default port 8080
and, when another worker on the same host has it, falls back to a free port with a warning, so
several workers on one machine start without flags. 0 disables the server.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

from bgq.errors import ConfigError
from bgq.httpserver import HttpServer, Request, Response

log = logging.getLogger("bgq.worker")
DEFAULT_PORT = 8080


class Probes:
    """The worker's HTTP surface; ``tick()`` marks the event loop alive."""

    def __init__(
        self,
        *,
        max_lag_seconds: float,
        ready: Callable[[], bool],
        draining: Callable[[], bool],
        render_metrics: Callable[[], bytes],
    ) -> None:
        self.max_lag_seconds = max_lag_seconds
        self._ready = ready
        self._draining = draining
        self._render_metrics = render_metrics
        self.last_tick = time.monotonic()
        self.server: HttpServer | None = None
        self.port: int | None = None

    def tick(self) -> None:
        """Called by the worker's ticker every 50 ms: /livez fails when this stops."""
        self.last_tick = time.monotonic()

    async def _livez(self, _: Request) -> Response:
        lag = time.monotonic() - self.last_tick
        if lag > self.max_lag_seconds:
            return Response(503, f"event loop blocked for {lag:.1f} s\n".encode())
        return Response(200, b"ok\n")

    async def _readyz(self, _: Request) -> Response:
        if self._draining():
            return Response(503, b"draining\n")
        if self._ready():
            return Response(200, b"ready\n")
        return Response(503, b"not ready\n")

    async def _metrics(self, _: Request) -> Response:
        return Response(200, self._render_metrics(), "text/plain; version=0.0.4; charset=utf-8")

    async def start(self, port: int | None) -> None:
        """Serve on ``port`` (None: the default with fallback; 0: disabled)."""
        if port == 0:
            return
        for candidate in (DEFAULT_PORT, 0) if port is None else (port,):
            server = HttpServer("0.0.0.0", candidate)
            server.route("GET", "/livez", self._livez)
            server.route("GET", "/readyz", self._readyz)
            server.route("GET", "/metrics", self._metrics)
            try:
                await server.start()
            except OSError as exc:
                if port is None and exc.errno == errno.EADDRINUSE:
                    continue
                raise ConfigError(
                    f"cannot serve probes and metrics on port {candidate}: {exc} "
                    "(set BGQ_HTTP_PORT to a free port, or 0 to disable)"
                ) from exc
            self.server, self.port = server, server.port
            if port is None and candidate == 0:
                log.warning(
                    "port %d is taken (another worker on this host?): serving probes and "
                    "metrics on port %d instead; set BGQ_HTTP_PORT to choose",
                    DEFAULT_PORT,
                    server.port,
                )
            return

    async def stop(self) -> None:
        """Stop serving."""
        if self.server is not None:
            await self.server.stop()
            self.server = None


__all__ = ["DEFAULT_PORT", "Probes"]
