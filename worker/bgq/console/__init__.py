"""The bgq web console (``bgq console``, docs/console.md): queues, jobs, dead letters, workers
and the autoscaler's decisions in a browser.

An optional part of the package: ``pip install 'bgq[console]'`` brings Starlette, uvicorn,
Jinja2, sse-starlette and asgi-csrf; a worker image without them still imports ``bgq``. The
console is producer-side: it uses :class:`bgq.AsyncClient` and never the worker runtime.
"""

from __future__ import annotations

from bgq.console.app import CSP, Console, ConsoleConfig, create_app
from bgq.console.server import config_from_env, serve

__all__ = ["CSP", "Console", "ConsoleConfig", "config_from_env", "create_app", "serve"]
