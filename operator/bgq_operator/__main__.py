"""``bgq-operator`` / ``python -m bgq_operator``: run the operator.

Namespaces: ``--namespace NS`` (repeatable) or ``BGQ_OPERATOR_NAMESPACES=a,b``; none means all
namespaces. ``--http-port`` / ``BGQ_OPERATOR_HTTP_PORT`` (default 8080, 0 disables) serves
``/healthz`` (the operator's loop answers) and ``/metrics`` (Prometheus).
``--worker-scrape-annotations`` / ``BGQ_OPERATOR_WORKER_SCRAPE_ANNOTATIONS=true`` puts
``prometheus.io/*`` scrape annotations on worker pods. Always standalone: one
replica (Deployment strategy Recreate), no kopf peering.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys

import kopf
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bgq.httpserver import HttpServer, Request, Response
from bgq_operator import handlers, metrics
from bgq_operator.manifests import ManifestOptions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (environment variables give the defaults)."""
    parser = argparse.ArgumentParser(prog="bgq-operator", description=__doc__)
    env_ns = [n.strip() for n in os.environ.get("BGQ_OPERATOR_NAMESPACES", "").split(",")]
    parser.add_argument(
        "--namespace", "-n", action="append", dest="namespaces",
        help="watch this namespace (repeatable; default: all namespaces)",
    )  # fmt: skip
    parser.add_argument(
        "--http-port", type=int,
        default=int(os.environ.get("BGQ_OPERATOR_HTTP_PORT", "8080")),
        help="port of /healthz and /metrics (0 disables)",
    )  # fmt: skip
    parser.add_argument(
        "--http-host", default=os.environ.get("BGQ_OPERATOR_HTTP_HOST", "0.0.0.0"),
        help="address of /healthz and /metrics",
    )  # fmt: skip
    parser.add_argument(
        "--worker-scrape-annotations", action=argparse.BooleanOptionalAction,
        default=os.environ.get("BGQ_OPERATOR_WORKER_SCRAPE_ANNOTATIONS", "").lower()
        in ("1", "true", "yes"),
        help="put prometheus.io/scrape|port|path annotations on worker pods",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default=os.environ.get("BGQ_LOG_LEVEL", "INFO"), help="logging level"
    )
    args = parser.parse_args(argv)
    if not args.namespaces:
        args.namespaces = [n for n in env_ns if n]
    return args


async def _healthz(_: Request) -> Response:
    return Response(body=b"ok\n")


async def _metrics(_: Request) -> Response:
    return Response(body=generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)


async def run(args: argparse.Namespace, memo: handlers.OperatorMemo) -> None:
    """Run kopf and the health/metrics server until stopped."""
    server: HttpServer | None = None
    if args.http_port:
        server = HttpServer(args.http_host, args.http_port)
        server.route("GET", "/healthz", _healthz)
        server.route("GET", "/metrics", _metrics)
        await server.start()
        logging.getLogger("bgq_operator").info("health and metrics on port %d", server.port)
    try:
        await kopf.operator(
            standalone=True,
            clusterwide=not args.namespaces,
            namespaces=list(args.namespaces),
            memo=memo,
        )
    finally:
        if server is not None:
            await server.stop()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # kopf logs every successful handler call at INFO: one line per watch event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # importing handlers registered them with kopf; the memo carries the options to them
    memo = handlers.OperatorMemo(
        manifest_options=ManifestOptions(scrape_annotations=args.worker_scrape_annotations)
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args, memo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
